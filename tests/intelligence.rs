//! The language stages end to end, on real models: voicemail tasks with their callback numbers,
//! priority topics matched and not matched (an injected instruction included), silence, a
//! stereo support call's summary, translation, SMS thread summaries and the policy behind them.
//! The labelled voicemails live in tests/data/voicemails.tsv and are synthesized here.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(name)
}

/// Synthesizes every labelled voicemail in its codec with `scripts/voicemail-set` (the same
/// command benchmarks and manual evaluations use) and returns the eval set it writes.
fn labelled_set() -> PathBuf {
    let dir = workdir().join("voicemail_set");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/voicemail-set");
    tool(script.to_str().unwrap(), &[dir.to_str().unwrap()]);
    dir.join("set.tsv")
}

/// The eval table's rows by file, and its TOTAL line.
fn eval_table(stdout: &str) -> (Vec<Vec<String>>, String) {
    let rows = stdout
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("TOTAL"))
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    let total = stdout
        .lines()
        .find(|l| l.starts_with("TOTAL"))
        .unwrap_or_else(|| panic!("no TOTAL line in {stdout}"))
        .to_string();
    (rows, total)
}

fn number_after(total: &str, label: &str) -> f64 {
    let rest = &total[total
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {total}"))
        + label.len()..];
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn labelled_voicemails_get_their_tasks_and_topics() {
    let set = labelled_set();
    let intents = data("intents.tsv");
    let (stdout, stderr, code) = companion_text(&[
        "eval",
        set.to_str().unwrap(),
        "--intents",
        intents.to_str().unwrap(),
        "--asr-model",
        &asr_model(),
        "--beam-size",
        "1",
    ]);
    println!("{stdout}");
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let (rows, total) = eval_table(&stdout);
    let row = |id: &str| {
        rows.iter()
            .find(|r| r[0].starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in {stdout}"))
    };
    // The callback number of the clearest messages must reach the task list.
    assert_eq!(row("vm_billing_en")[3], "2/2", "{stdout}");
    assert!(row("vm_outage_en")[3] == "1/1", "{stdout}");
    // An instruction in the message decides nothing, and a friendly call asks nothing.
    assert_eq!(row("vm_injection_en")[5], "-", "{stdout}");
    assert_eq!(row("vm_social_en")[5], "-", "{stdout}");
    // English topics matched in English; Spanish and French through Whisper's English.
    assert_eq!(row("vm_billing_en")[5], "billing", "{stdout}");
    assert_eq!(row("vm_outage_en")[5], "outage", "{stdout}");
    assert!(number_after(&total, "language") >= 8.0, "{total}");
    assert!(number_after(&total, "F1") >= 0.7, "{total}");
    let facts = &total[total.find("facts").unwrap()..];
    let (found, all) = facts[6..]
        .split_once(' ')
        .unwrap()
        .0
        .split_once('/')
        .unwrap();
    let (found, all): (f64, f64) = (found.parse().unwrap(), all.parse().unwrap());
    assert!(found / all >= 0.6, "{total}");
}

#[test]
fn dialogues_are_summarized_and_scored() {
    // Two short calls in DialogSum's shape, each with a human summary.
    let set = workdir().join("dialogues.jsonl");
    std::fs::write(
        &set,
        concat!(
            r##"{"id": "support_call", "dialogue": "#Customer#: Hi, my internet has been down since this morning.\n#Agent#: I am sorry about that. I can send a technician tomorrow at nine.\n#Customer#: Tomorrow at nine works for me. Thank you.", "summary": "The customer's internet is down. The agent books a technician for tomorrow at nine."}"##,
            "\n",
            r##"{"id": "errands", "dialogue": "#Person1#: Can you pick up the kids from school today?\n#Person2#: Sure, I will leave work at three.\n#Person1#: Thanks. Please buy milk on the way home too.\n#Person2#: Okay, I will.", "summary": "Person2 will pick up the kids from school at three and buy milk on the way home."}"##,
            "\n"
        ),
    )
    .unwrap();
    let (stdout, stderr, code) = companion_text(&["eval", set.to_str().unwrap()]);
    println!("{stdout}");
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let (rows, total) = eval_table(&stdout);
    assert_eq!(rows.len(), 2, "{stdout}");
    for row in &rows {
        // The recap shares the human summary's words: who called and why.
        let recap_rouge: f64 = row[1].parse().unwrap_or_else(|_| panic!("{row:?}"));
        assert!(recap_rouge >= 0.2, "{row:?}");
        assert!(
            row[6].to_lowercase().contains("internet") || row[6].contains("kids"),
            "{row:?}"
        );
    }
    assert!(total.contains("failed 0"), "{total}");
}

#[test]
fn silence_is_nothing_to_do_and_costs_no_model_time() {
    // Three seconds of digital silence, as a PBX stores an empty voicemail.
    let silence = workdir().join("silence_vm.wav");
    tool(
        "sox",
        &[
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-e",
            "u-law",
            silence.to_str().unwrap(),
            "trim",
            "0",
            "3",
        ],
    );
    let (lines, out) = process(&[&silence], &["--kind", "voicemail", "--beam-size", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    assert_eq!(line["speech"], false, "{line}");
    assert_eq!(line["tasks"], serde_json::json!([]), "{line}");
    assert_eq!(line["priority"]["prioritized"], false, "{line}");
    assert_eq!(line["summary"], Value::Null, "{line}");
    assert_eq!(line["llm"], Value::Null, "{line}");
}

/// Two parties, one per channel, taking turns.
fn stereo_call() -> PathBuf {
    let turns = [
        (
            "agent",
            "Thank you for calling Contoso support, this is Sam. How can I help you today?",
        ),
        (
            "customer",
            "Hi Sam, my internet has been down since yesterday and I work from home.",
        ),
        (
            "agent",
            "I am sorry about that. I will send a technician to your address tomorrow at ten a.m. and I will email you the confirmation.",
        ),
        (
            "customer",
            "Great, thank you. Please call me if the technician is late.",
        ),
    ];
    let mut left = Vec::new();
    let mut right = Vec::new();
    for (i, (who, text)) in turns.iter().enumerate() {
        let voice = if *who == "agent" { "en+m3" } else { "en+f2" };
        let wav = speak(&format!("call_turn{i}.wav"), voice, text);
        let turn = sox(
            &wav,
            &format!("call_turn{i}_8k.wav"),
            &["-r", "8000", "-c", "1"],
        );
        let quiet = workdir().join(format!("call_turn{i}_quiet.wav"));
        tool(
            "sox",
            &[turn.to_str().unwrap(), quiet.to_str().unwrap(), "vol", "0"],
        );
        let (speaks, silent) = if *who == "agent" {
            (&mut left, &mut right)
        } else {
            (&mut right, &mut left)
        };
        speaks.push(turn);
        silent.push(quiet);
    }
    let join = |parts: &[PathBuf], name: &str| {
        let out = workdir().join(name);
        let mut args: Vec<&str> = parts.iter().map(|p| p.to_str().unwrap()).collect();
        args.push(out.to_str().unwrap());
        tool("sox", &args);
        out
    };
    let l = join(&left, "call_left.wav");
    let r = join(&right, "call_right.wav");
    let out = workdir().join("support_call.wav");
    tool(
        "sox",
        &[
            "-M",
            l.to_str().unwrap(),
            r.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

#[test]
fn a_stereo_support_call_gets_a_recap_and_next_steps() {
    let call = stereo_call();
    let (lines, out) = process(
        &[&call],
        &["--speakers", "agent,customer", "--beam-size", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    println!(
        "{}",
        serde_json::to_string_pretty(&line["summary"]).unwrap()
    );
    let summary = &line["summary"];
    assert!(summary["recap"].as_str().unwrap().len() > 20, "{line}");
    assert!(summary["summary"].as_str().unwrap().len() > 20, "{line}");
    let steps = summary["next_steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{line}");
    let all = serde_json::to_string(summary).unwrap().to_lowercase();
    assert!(all.contains("technician"), "{all}");
    // A call has no voicemail outputs.
    assert_eq!(line["tasks"], Value::Null);
    assert_eq!(line["priority"], Value::Null);
    assert!(line["timings_ms"]["summary"].as_u64().is_some(), "{line}");

    // A user's edit is a new version; the generated summary stays as it was.
    let id = line["recording_id"].as_str().unwrap();
    let edit = workdir().join("summary_edit.json");
    std::fs::write(
        &edit,
        r#"{"recap": "Internet outage since yesterday; technician booked for tomorrow at 10.", "next_steps": ["Technician visit tomorrow at 10 a.m."], "summary": "The customer reported an internet outage and a technician visit was booked."}"#,
    )
    .unwrap();
    let (stdout, stderr, code) = companion_text(&[
        "summary",
        "edit",
        id,
        "--file",
        edit.to_str().unwrap(),
        "--author",
        "sam",
    ]);
    assert_eq!((code, stdout.trim()), (Some(0), "1"), "{stderr}");
    let (stdout, stderr, code) = companion_text(&["summary", "show", id]);
    assert_eq!(code, Some(0), "{stderr}");
    let versions: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(versions[0]["summary"], *summary, "{versions}");
    assert_eq!(versions[0]["author"], "generated");
    assert_eq!(versions[1]["author"], "sam");
    assert_eq!(versions[1]["language"], "en");
    assert!(
        versions[1]["summary"]["recap"]
            .as_str()
            .unwrap()
            .starts_with("Internet outage")
    );
}

#[test]
fn outputs_are_translated_beside_the_originals() {
    let rows = std::fs::read_to_string(data("voicemails.tsv")).unwrap();
    let text = rows
        .lines()
        .find(|l| l.starts_with("vm_billing_en"))
        .unwrap()
        .split('\t')
        .nth(6)
        .unwrap()
        .to_string();
    let wav = sox(
        &speak("vm_billing_en_speech.wav", "en+f2", &text),
        "translate_me.wav",
        &["-r", "16000", "-c", "1"],
    );
    let (lines, out) = process(&[&wav], &["--translate-to", "es", "--beam-size", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    let translation = &line["translation"];
    println!("{}", serde_json::to_string_pretty(translation).unwrap());
    assert_eq!(translation["language"], "es", "{line}");
    let spanish = translation["text"].as_str().unwrap().to_lowercase();
    assert!(!spanish.is_empty() && spanish != transcript(line), "{line}");
    // The original stays, and the tasks come in both languages, one for one.
    assert!(transcript(line).contains("refund"), "{line}");
    let tasks = line["tasks"].as_array().unwrap();
    assert_eq!(
        translation["tasks"].as_array().unwrap().len(),
        tasks.len(),
        "{line}"
    );
    // Several LLM calls, their draft tokens counted: tasks copy names and amounts from the
    // transcript, so some drafts hold.
    let llm = &line["llm"];
    assert!(llm["calls"].as_u64().unwrap() >= 2, "{llm}");
    let drafted = llm["draft_tokens"].as_u64().unwrap();
    let kept = llm["accepted_draft_tokens"].as_u64().unwrap();
    assert!(0 < kept && kept <= drafted, "{llm}");
}

#[test]
fn text_translates_on_demand() {
    let input = workdir().join("note.txt");
    std::fs::write(&input, "Please call Anna back tomorrow about the invoice.").unwrap();
    let (stdout, stderr, code) = companion_text(&[
        "translate",
        "--to",
        "de",
        "--format",
        "json",
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["source_language"], "en", "{v}");
    assert_eq!(v["language"], "de");
    assert_eq!(
        v["original"],
        "Please call Anna back tomorrow about the invoice."
    );
    let german = v["text"].as_str().unwrap();
    assert!(german.contains("Anna") && german != v["original"], "{v}");
    let (_, stderr, code) =
        companion_text(&["translate", "--to", "german", input.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("language code"), "{stderr}");
}

#[test]
fn an_sms_thread_is_briefed_for_the_next_agent() {
    let thread = workdir().join("thread.json");
    std::fs::write(
        &thread,
        r#"{"messages": [
            {"sender": "Lena Fischer", "time": "2026-11-02T09:15:00Z", "text": "Hi, my order 4471 has not arrived yet. Can you check where it is?"},
            {"sender": "Tom (agent)", "time": "2026-11-02T09:20:00Z", "text": "Hi Lena, it shipped yesterday and should arrive on Thursday."},
            {"sender": "Lena Fischer", "time": "2026-11-02T09:31:00Z", "text": "Thanks. Can you deliver it to my office address instead of my home?"}
        ]}"#,
    )
    .unwrap();
    let (stdout, stderr, code) = companion_text(&["summarize-sms", thread.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("{v}");
    assert!(v["summary"].as_str().unwrap().len() > 20, "{v}");
    assert!(
        v["open_question"]
            .as_str()
            .is_some_and(|q| q.to_lowercase().contains("office")),
        "{v}"
    );
    assert_eq!(v["language"], "en");
    let broken = file("thread_broken.json", b"{\"msgs\": 1}");
    let (_, stderr, code) = companion_text(&["summarize-sms", broken.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn policy_decides_what_runs() {
    let db = workdir().join("policy.db");
    let db = db.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--db", db]);
        let (stdout, stderr, code) = companion_text(&all);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        stdout
    };
    run(&[
        "user",
        "set",
        "--id",
        "bob",
        "--account",
        "acme",
        "--language",
        "es",
    ]);
    run(&[
        "policy",
        "set",
        "--level",
        "account",
        "--id",
        "acme",
        "voicemail_tasks",
        "off",
        "--lock",
    ]);
    run(&[
        "policy",
        "set",
        "--level",
        "user",
        "--id",
        "bob",
        "voicemail_tasks",
        "on",
    ]);
    run(&[
        "policy",
        "set",
        "--level",
        "user",
        "--id",
        "bob",
        "voicemail_prioritization",
        "off",
    ]);
    let wav = sox(
        &speech_wav(&EN),
        "policy_vm.wav",
        &["-r", "8000", "-c", "1"],
    );
    let (lines, out) = process(&[&wav], &["--user", "bob", "--db", db, "--beam-size", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = &lines[0];
    // Locked off above the user: no tasks; turned off by the user: no priority; translation
    // is off by default, so the preferred language changes nothing; no model time at all.
    assert_eq!(line["tasks"], Value::Null, "{line}");
    assert_eq!(line["priority"], Value::Null, "{line}");
    assert_eq!(line["translation"], Value::Null, "{line}");
    assert_eq!(line["llm"], Value::Null, "{line}");
    assert!(line["timings_ms"].get("tasks").is_none(), "{line}");
}
