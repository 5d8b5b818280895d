//! `companion summary show|edit`: a call's generated summary and people's edits of it, each
//! edit a new version (the generated one is never overwritten).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use companion_core::CallSummary;
use companion_language::detect_text_language;
use companion_store::Store;

#[derive(Subcommand, Debug)]
pub enum SummaryCommand {
    /// Every version of a recording's summary as JSON: the generated one (version 0), then edits.
    Show {
        recording_id: String,
        #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
        db: String,
    },
    /// Stores an edited summary (a JSON file with `recap`, `next_steps`, `summary`) as a new
    /// version and prints its number.
    Edit {
        recording_id: String,
        /// The edited summary.
        #[arg(long)]
        file: PathBuf,
        /// Who edited it.
        #[arg(long, env = "COMPANION_USER")]
        author: String,
        #[arg(long, env = "COMPANION_DB", default_value = "./companion.db")]
        db: String,
    },
}

pub fn run(command: SummaryCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match command {
            SummaryCommand::Show { recording_id, db } => {
                let store = Store::open(&db).await?;
                let versions = store.summary_versions(&recording_id).await?;
                store.close().await;
                if versions.is_empty() {
                    bail!("recording {recording_id} has no summary");
                }
                println!("{}", serde_json::to_string(&versions)?);
            }
            SummaryCommand::Edit {
                recording_id,
                file,
                author,
                db,
            } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let summary: CallSummary = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: a summary is {{\"recap\": …, \"next_steps\": […], \"summary\": …}}",
                        file.display()
                    )
                })?;
                if summary.recap.trim().is_empty() && summary.summary.trim().is_empty() {
                    bail!("the edited summary is empty");
                }
                let all = format!(
                    "{} {} {}",
                    summary.recap,
                    summary.summary,
                    summary.next_steps.join(" ")
                );
                let language = detect_text_language(&all).map(|l| l.code);
                let store = Store::open(&db).await?;
                if store.summary_versions(&recording_id).await?.is_empty() {
                    store.close().await;
                    bail!("recording {recording_id} has no generated summary to edit");
                }
                let version = store
                    .edit_summary(&recording_id, &summary, &author, language.as_deref())
                    .await?;
                store.close().await;
                println!("{version}");
            }
        }
        Ok(())
    })
}
