//! `companion policy|user|intents …`: the administrator's side. Policies decide which AI
//! features each user gets (set at account, site, group or user level, optionally locked), the
//! user directory places users in that hierarchy, and intents are each user's priority topics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use companion_core::Intent;
use companion_core::policy::{
    EffectivePolicy, Level, PolicyEntry, Setting, Source, UserProfile, Value, check_intent,
};
use companion_store::Store;
use serde_json::json;

/// Flattened into the top-level commands, so each of these is a command of its own.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set, read and clear admin policies, and show what a user gets.
    Policy(PolicyArgs),
    /// The user directory: a user's account, site, group and preferred language.
    User(UserArgs),
    /// A user's priority topics: voicemails about one of them are flagged for the user.
    Intents(IntentsArgs),
}

/// Where the policies live. Global so the options may follow the subcommand.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Result store: a SQLite file path or sqlite: URL.
    #[arg(
        long,
        global = true,
        env = "COMPANION_DB",
        default_value = "./companion.db"
    )]
    db: String,
    /// The tenant whose policies, users and intents these are.
    #[arg(long, global = true, env = "COMPANION_TENANT", default_value = "local")]
    tenant: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned, human-readable lines.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Set one policy value at one level: `set --level site --id paris translation es --lock`.
    ///
    /// Values: call_summary, voicemail_tasks, voicemail_prioritization and
    /// team_sms_thread_summary take on/off; translation takes off, on (the user's preferred
    /// language) or a target language code; language_allowlist takes codes like en,es,de or any.
    Set {
        /// account, site, group or user.
        #[arg(long)]
        level: Level,
        /// The account, site, group or user id.
        #[arg(long)]
        id: String,
        setting: Setting,
        value: String,
        /// Lower levels cannot override a locked value.
        #[arg(long)]
        lock: bool,
    },
    /// The values set at one level for one id (all, or one setting).
    Get {
        #[arg(long)]
        level: Level,
        #[arg(long)]
        id: String,
        setting: Option<Setting>,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove one value so the levels above (or the default) apply again.
    Clear {
        #[arg(long)]
        level: Level,
        #[arg(long)]
        id: String,
        setting: Setting,
    },
    /// What a user gets after resolution, and where each value comes from.
    Show {
        #[arg(long)]
        user: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user or change their entry; options not given keep their value, an empty value
    /// (`--site ""`) removes it.
    Set {
        #[arg(long)]
        id: String,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// Preferred language (ISO 639 code): what translation targets when a policy turns it
        /// on without naming a language.
        #[arg(long)]
        language: Option<String>,
    },
    /// A user's directory entry.
    Show {
        #[arg(long)]
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(Debug, Args)]
pub struct IntentsArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: IntentsCommand,
}

#[derive(Debug, Subcommand)]
enum IntentsCommand {
    /// Add a topic, or replace the description of the topic with that name.
    Add {
        #[arg(long)]
        user: String,
        name: String,
        /// What a message about this topic sounds like; messages are scored against it.
        description: String,
    },
    /// Add or replace topics from a file of `name<TAB>description` lines (`#` starts a
    /// comment). Nothing is written if any line is bad.
    Import {
        #[arg(long)]
        user: String,
        file: PathBuf,
    },
    /// A user's topics, as `name<TAB>description` lines (the import format).
    List {
        #[arg(long)]
        user: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Remove a topic.
    Remove {
        #[arg(long)]
        user: String,
        name: String,
    },
}

pub fn run(cmd: AdminCommand) -> anyhow::Result<()> {
    let store_args = match &cmd {
        AdminCommand::Policy(a) => &a.store,
        AdminCommand::User(a) => &a.store,
        AdminCommand::Intents(a) => &a.store,
    };
    let (db, tenant) = (store_args.db.clone(), store_args.tenant.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let store = Store::open(&db)
            .await
            .with_context(|| format!("cannot open the result store {db}"))?;
        let outcome = match cmd {
            AdminCommand::Policy(a) => policy(&store, &tenant, a.command).await,
            AdminCommand::User(a) => user(&store, &tenant, a.command).await,
            AdminCommand::Intents(a) => intents(&store, &tenant, a.command).await,
        };
        store.close().await;
        outcome
    })
}

async fn policy(store: &Store, tenant: &str, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set {
            level,
            id,
            setting,
            value,
            lock,
        } => {
            let entry = PolicyEntry {
                level,
                scope_id: id,
                setting,
                value: Value::parse(setting, &value)?,
                locked: lock,
            };
            store.set_policy(tenant, &entry).await?;
            println!("{}", describe_entry(&entry));
        }
        PolicyCommand::Get {
            level,
            id,
            setting,
            format,
        } => {
            let mut entries = store.policies_at(tenant, level, &id).await?;
            entries.retain(|e| setting.is_none_or(|s| e.setting == s));
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
                Format::Text if entries.is_empty() => match setting {
                    Some(s) => eprintln!("{s} is not set at {level} {id}"),
                    None => eprintln!("nothing is set at {level} {id}"),
                },
                Format::Text => {
                    for e in &entries {
                        let lock = if e.locked { "locked" } else { "" };
                        let line = format!("{:<26} {:<12} {lock}", e.setting, e.value.to_string());
                        println!("{}", line.trim_end());
                    }
                }
            }
        }
        PolicyCommand::Clear { level, id, setting } => {
            if store.clear_policy(tenant, level, &id, setting).await? {
                println!("cleared {setting} at {level} {id}");
            } else {
                eprintln!("{setting} was not set at {level} {id}; nothing to clear");
            }
        }
        PolicyCommand::Show { user, format } => {
            let (policy, profile) = store.effective_policy(tenant, &user).await?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&show_json(&user, &policy, profile.as_ref()))?
                ),
                Format::Text => print!("{}", show_text(&user, &policy, profile.as_ref())),
            }
        }
    }
    Ok(())
}

fn describe_entry(e: &PolicyEntry) -> String {
    let lock = if e.locked { " (locked)" } else { "" };
    format!(
        "set {} = {} at {} {}{lock}",
        e.setting, e.value, e.level, e.scope_id
    )
}

fn describe_source(source: Option<&Source>) -> String {
    match source {
        None => "default".to_string(),
        Some(s) if s.locked => format!("{} {} (locked)", s.level, s.scope_id),
        Some(s) => format!("{} {}", s.level, s.scope_id),
    }
}

/// The effective value as shown to an administrator: translation says what it translates into.
fn describe_value(policy: &EffectivePolicy, setting: Setting, preferred: Option<&str>) -> String {
    let value = policy.value(setting);
    if setting != Setting::Translation || !policy.translation.enabled {
        return value.to_string();
    }
    match (&policy.translation.target, preferred) {
        (Some(target), _) => format!("on, into {target}"),
        (None, Some(lang)) => format!("on, into {lang} (preferred language)"),
        (None, None) => "on (no preferred language: nothing to translate into)".to_string(),
    }
}

fn show_text(user: &str, policy: &EffectivePolicy, profile: Option<&UserProfile>) -> String {
    let mut out = String::new();
    let preferred = profile.and_then(|p| p.preferred_language.as_deref());
    match profile {
        Some(p) => {
            let _ = writeln!(out, "user {}: {}", p.user_id, describe_profile(p));
        }
        None => {
            let _ = writeln!(
                out,
                "user {user} is not in the directory: only user-level policies apply"
            );
        }
    }
    for setting in Setting::ALL {
        let _ = writeln!(
            out,
            "  {:<26} {:<40} {}",
            setting.as_str(),
            describe_value(policy, setting, preferred),
            describe_source(policy.source(setting))
        );
    }
    out
}

fn show_json(
    user: &str,
    policy: &EffectivePolicy,
    profile: Option<&UserProfile>,
) -> serde_json::Value {
    let preferred = profile.and_then(|p| p.preferred_language.as_deref());
    let settings: serde_json::Map<String, serde_json::Value> = Setting::ALL
        .into_iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                json!({ "value": policy.value(s), "source": policy.source(s) }),
            )
        })
        .collect();
    json!({
        "user_id": user.trim(),
        "profile": profile,
        "translation_target": policy.translation_target(preferred),
        "settings": settings,
    })
}

fn describe_profile(p: &UserProfile) -> String {
    let field = |v: &Option<String>| v.as_deref().unwrap_or("-").to_string();
    format!(
        "account {}, site {}, group {}, preferred language {}",
        field(&p.account_id),
        field(&p.site_id),
        field(&p.group_id),
        field(&p.preferred_language)
    )
}

async fn user(store: &Store, tenant: &str, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Set {
            id,
            account,
            site,
            group,
            language,
        } => {
            let current = store.user(tenant, &id).await?;
            let mut profile = current.unwrap_or_else(|| UserProfile {
                user_id: id.clone(),
                ..UserProfile::default()
            });
            // Given options replace, empty ones clear; `validated` (in the store) drops empties.
            for (slot, given) in [
                (&mut profile.account_id, account),
                (&mut profile.site_id, site),
                (&mut profile.group_id, group),
                (&mut profile.preferred_language, language),
            ] {
                if let Some(value) = given {
                    *slot = Some(value);
                }
            }
            store.upsert_user(tenant, &profile).await?;
            let stored = store
                .user(tenant, &id)
                .await?
                .with_context(|| format!("user {id} vanished right after being written"))?;
            println!("user {}: {}", stored.user_id, describe_profile(&stored));
        }
        UserCommand::Show { id, format } => {
            let Some(profile) = store.user(tenant, &id).await? else {
                bail!(
                    "user {id} is not in the directory (add them with `companion user set --id {id} …`)"
                );
            };
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&profile)?),
                Format::Text => {
                    println!("user {}: {}", profile.user_id, describe_profile(&profile))
                }
            }
        }
    }
    Ok(())
}

async fn intents(store: &Store, tenant: &str, cmd: IntentsCommand) -> anyhow::Result<()> {
    match cmd {
        IntentsCommand::Add {
            user,
            name,
            description,
        } => {
            let intent = Intent { name, description };
            store.set_intent(tenant, &user, &intent).await?;
            println!("intent {} set for user {}", intent.name.trim(), user.trim());
        }
        IntentsCommand::Import { user, file } => {
            let intents = read_intents_file(&file)?;
            for intent in &intents {
                store.set_intent(tenant, &user, intent).await?;
            }
            println!(
                "imported {} intents for user {} from {}",
                intents.len(),
                user.trim(),
                file.display()
            );
        }
        IntentsCommand::List { user, format } => {
            let intents = store.intents(tenant, &user).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&intents)?),
                Format::Text if intents.is_empty() => {
                    eprintln!("user {} has no intents", user.trim())
                }
                Format::Text => {
                    for i in intents {
                        println!("{}\t{}", i.name, i.description);
                    }
                }
            }
        }
        IntentsCommand::Remove { user, name } => {
            if store.remove_intent(tenant, &user, &name).await? {
                println!("removed intent {} of user {}", name.trim(), user.trim());
            } else {
                eprintln!(
                    "user {} has no intent {}; nothing to remove",
                    user.trim(),
                    name.trim()
                );
            }
        }
    }
    Ok(())
}

fn read_intents_file(path: &Path) -> anyhow::Result<Vec<Intent>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_intents_tsv(&text)
        .with_context(|| format!("{} is not a valid intents file", path.display()))
}

/// Parses `name<TAB>description` lines. Blank lines and lines starting with `#` are skipped;
/// any other line without exactly one tab, with an empty side, or repeating an earlier name is
/// an error naming its line, so a half-right file never half-imports.
pub fn parse_intents_tsv(text: &str) -> anyhow::Result<Vec<Intent>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut intents = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut columns = line.split('\t');
        let (Some(name), Some(description), None) =
            (columns.next(), columns.next(), columns.next())
        else {
            bail!(
                "line {number}: expected name<TAB>description (exactly one tab), got {trimmed:?}"
            );
        };
        let intent = check_intent(&Intent {
            name: name.to_string(),
            description: description.to_string(),
        })
        .with_context(|| format!("line {number}"))?;
        if let Some(first) = seen.insert(intent.name.clone(), number) {
            bail!(
                "line {number}: intent {:?} is already defined on line {first}",
                intent.name
            );
        }
        intents.push(intent);
    }
    Ok(intents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_lines_become_intents() {
        let text = "\u{feff}# priority topics\n\nbilling\tan invoice is wrong or unpaid\r\n  \n renewal \t the contract is up for renewal \n";
        let intents = parse_intents_tsv(text).unwrap();
        assert_eq!(
            intents,
            vec![
                Intent {
                    name: "billing".into(),
                    description: "an invoice is wrong or unpaid".into()
                },
                Intent {
                    name: "renewal".into(),
                    description: "the contract is up for renewal".into()
                },
            ]
        );
        assert!(
            parse_intents_tsv("# only a comment\n\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let cases = [
            (
                "ok\tfine\nno tab here\n",
                "line 2: expected name<TAB>description",
            ),
            ("a\tb\tc\n", "line 1: expected name<TAB>description"),
            ("\n\t just a description\n", "line 2"),
            ("name\t  \n", "line 1"),
            (
                "x\tone\n# c\nx\ttwo\n",
                "line 3: intent \"x\" is already defined on line 1",
            ),
        ];
        for (text, expected) in cases {
            let err = format!("{:#}", parse_intents_tsv(text).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let err = format!("{:#}", parse_intents_tsv("name\t \n").unwrap_err());
        assert!(
            err.contains("intent description must not be empty"),
            "{err}"
        );
    }
}
