//! TEMPORARY exploration (to be deleted).
mod common;
use companion_language::{Embedder, calibrate, cosine, split_sentences};

fn norm(v: &mut Vec<f32>) { let n = v.iter().map(|x| x*x).sum::<f32>().sqrt().max(1e-12); for x in v.iter_mut() { *x /= n; } }
fn sub(a: &[f32], c: &[f32]) -> Vec<f32> { let mut v: Vec<f32> = a.iter().zip(c).map(|(x,y)| x-y).collect(); norm(&mut v); v }

#[test]
fn scratch() {
    let e = Embedder::load(&common::embedding_dir("all-minilm-l6-v2")).unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/intent_calibration.tsv")).unwrap();
    let rows: Vec<Vec<String>> = text.lines().skip(1).map(|l| l.split('\t').map(String::from).collect()).collect();
    let generic = [
        "Hi, this is John calling.", "Please call me back when you get a chance.", "Thanks, bye.",
        "Hello, it's Sarah, give me a call at 555 0100.", "Hi, I'm calling about something.",
        "Good morning, this is a message for you.", "Let me know, talk to you soon.",
        "Hey, just following up on our conversation.", "You can reach me at my office number.",
        "Hi, it's me again, I tried to reach you earlier.", "Have a great day.", "I wanted to ask you a question.",
    ];
    let mut g = e.embed(&generic).unwrap();
    let mut c = vec![0f32; 384];
    for v in &g { for (a,b) in c.iter_mut().zip(v) { *a += b / generic.len() as f32; } }
    g.clear();
    let formats: Vec<(&str, Box<dyn Fn(&str,&str)->String>)> = vec![
        ("name: desc", Box::new(|n: &str, d: &str| format!("{n}: {d}"))),
        ("desc", Box::new(|_n: &str, d: &str| d.to_string())),
        ("name", Box::new(|n: &str, _d: &str| n.to_string())),
    ];
    for (fname, f) in &formats {
        let mut variants: Vec<(String, Vec<(f32,bool)>)> = ["msg","sent","best","c-msg","c-sent","c-best","sent-mean2"].iter().map(|s| (s.to_string(), vec![])).collect();
        for r in &rows {
            let it = f(&r[1], &r[2]);
            let iv = e.embed_one(&it).unwrap();
            let ivc = sub(&iv, &c);
            let sents = split_sentences(&r[0]);
            let mut units: Vec<String> = sents.clone();
            units.push(r[0].clone());
            let refs: Vec<&str> = units.iter().map(String::as_str).collect();
            let vs = e.embed(&refs).unwrap();
            let m = vs.last().unwrap();
            let label = r[3] == "1";
            let sims: Vec<f32> = vs[..sents.len()].iter().map(|v| cosine(v, &iv)).collect();
            let csims: Vec<f32> = vs[..sents.len()].iter().map(|v| cosine(&sub(v,&c), &ivc)).collect();
            let ms = cosine(m, &iv); let cms = cosine(&sub(m,&c), &ivc);
            let smax = sims.iter().cloned().fold(-1., f32::max);
            let csmax = csims.iter().cloned().fold(-1., f32::max);
            let mut sorted = sims.clone(); sorted.sort_by(|a,b| b.total_cmp(a));
            let mean2 = if sorted.len() > 1 { (sorted[0]+sorted[1])/2.0 } else { sorted[0] };
            let vals = [ms, smax, ms.max(smax), cms, csmax, cms.max(csmax), mean2.max(ms)];
            for (v, x) in variants.iter_mut().zip(vals) { v.1.push((x, label)); }
        }
        for (n, s) in &variants { let (t, f1) = calibrate(s); println!("{fname:12} {n:10} F1 {f1:.3} at {t:.3}"); }
    }
}
