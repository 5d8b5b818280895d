//! The language stages after speech recognition: voicemail tasks, call summary, priority and
//! translation, each run only when the recording's policy asks for it (a disabled feature costs
//! no model time). A stage whose model answer is unusable leaves its field `None` and a warning;
//! a model that cannot be loaded fails the recording.

use std::sync::Arc;

use companion_core::policy::EffectivePolicy;
use companion_core::{
    CallSummary, Intent, LlmStats, Priority, RecordingKind, RecordingResult, Task, Translation,
};
use companion_language::priority::IntentMatcher;
use companion_language::{
    Error as LanguageError, LanguageModels, TextGenerator, Usage, call_summary, translate_items,
    translate_text, voicemail_tasks,
};
use tracing::warn;

use crate::{PipelineError, Timer};

/// What the language stages need to know about the recording's user.
#[derive(Debug, Clone, Default)]
pub struct RecordingContext {
    /// The user's effective policy (every feature on and no translation when unknown).
    pub policy: EffectivePolicy,
    /// The user's priority topics.
    pub intents: Vec<Intent>,
    /// Translate the outputs into this language (policy and preferred language resolved).
    pub translate_to: Option<String>,
}

impl RecordingContext {
    /// Whether priority scoring needs an English rendering of non-English speech.
    pub(crate) fn wants_english(&self, kind: RecordingKind) -> bool {
        self.translate_to.as_deref() == Some("en")
            || (kind == RecordingKind::Voicemail
                && self.policy.voicemail_prioritization
                && !self.intents.is_empty())
    }
}

pub(crate) struct LanguageStages<'a> {
    pub models: &'a LanguageModels,
    pub context: &'a RecordingContext,
    pub kind: RecordingKind,
    /// Whisper's English rendering of non-English speech, when it ran.
    pub english: Option<String>,
}

impl LanguageStages<'_> {
    pub fn run(self, result: &mut RecordingResult, timer: &mut Timer) -> Result<(), PipelineError> {
        let policy = &self.context.policy;
        let voicemail = self.kind == RecordingKind::Voicemail;
        let language = result
            .language
            .as_ref()
            .map(|l| l.code.clone())
            .unwrap_or_else(|| "en".into());
        let mut usage = Usage::default();

        if !result.speech {
            // Nothing was said: nothing to do, nothing to flag, and no model time.
            if voicemail && policy.voicemail_tasks {
                result.tasks = Some(Vec::new());
            }
            if voicemail && policy.voicemail_prioritization {
                result.priority = Some(Priority::default());
            }
            return Ok(());
        }

        if voicemail && policy.voicemail_tasks {
            let llm = self.llm(timer)?;
            match timer.time("tasks", || {
                voicemail_tasks(llm.as_ref(), &result.transcript.text, &language)
            }) {
                Ok(out) => {
                    usage.merge(&out.usage);
                    result.tasks = Some(out.tasks);
                }
                Err(e) => stage_failed(result, "tasks", e)?,
            }
        }
        if !voicemail && policy.call_summary {
            let llm = self.llm(timer)?;
            match timer.time("summary", || {
                call_summary(llm.as_ref(), &result.transcript.segments, &language)
            }) {
                Ok(out) => {
                    usage.merge(&out.usage);
                    result.summary = Some(out.summary);
                }
                Err(e) => stage_failed(result, "summary", e)?,
            }
        }
        if voicemail && policy.voicemail_prioritization {
            match self.priority(result, &language, &mut usage, timer) {
                Ok(priority) => result.priority = Some(priority),
                Err(e) => stage_failed(result, "priority", e)?,
            }
        }
        if let Some(target) = self.context.translate_to.as_deref()
            && target != language
        {
            let mut warnings = Vec::new();
            match self.translation(result, &language, target, &mut usage, &mut warnings, timer) {
                Ok(translation) => result.translation = Some(translation),
                Err(e) => stage_failed(result, "translation", e)?,
            }
            result.warnings.extend(warnings);
        }
        if usage.calls > 0 {
            result.llm = Some(LlmStats {
                calls: usage.calls,
                prompt_tokens: usage.prompt_tokens,
                generated_tokens: usage.generated_tokens,
                prompt_tokens_per_s: round1(usage.prompt_tokens_per_sec()),
                generate_tokens_per_s: round1(usage.generate_tokens_per_sec()),
                draft_tokens: usage.draft_tokens,
                accepted_draft_tokens: usage.accepted_draft_tokens,
            });
        }
        Ok(())
    }

    fn llm(&self, timer: &mut Timer) -> Result<Arc<dyn TextGenerator>, LanguageError> {
        let loaded = self.models.llm()?;
        if loaded.load_ms > 0 {
            timer.add("load_llm", loaded.load_ms);
        }
        Ok(loaded.model)
    }

    /// Scores the English rendering of the message against the user's topics.
    fn priority(
        &self,
        result: &RecordingResult,
        language: &str,
        usage: &mut Usage,
        timer: &mut Timer,
    ) -> Result<Priority, LanguageError> {
        if self.context.intents.is_empty() {
            return Ok(Priority::default());
        }
        let english = if language == "en" {
            result.transcript.text.clone()
        } else if let Some(english) = self.english.clone().filter(|e| !e.trim().is_empty()) {
            english
        } else {
            let llm = self.llm(timer)?;
            let out = timer.time("translation", || {
                translate_text(llm.as_ref(), &result.transcript.text, Some(language), "en")
            })?;
            usage.merge(&out.usage);
            out.text
        };
        let embedder = self.models.embedder()?;
        if embedder.load_ms > 0 {
            timer.add("load_embedder", embedder.load_ms);
        }
        timer.time("priority", || {
            let matcher = IntentMatcher::new(embedder.model.as_ref(), &self.context.intents, None)?;
            matcher.score(&english)
        })
    }

    /// The transcript, summary and tasks in `target`, beside the originals.
    fn translation(
        &self,
        result: &RecordingResult,
        language: &str,
        target: &str,
        usage: &mut Usage,
        warnings: &mut Vec<String>,
        timer: &mut Timer,
    ) -> Result<Translation, LanguageError> {
        let text = match self.english.clone().filter(|_| target == "en") {
            Some(english) => english,
            None => {
                let llm = self.llm(timer)?;
                let out = timer.time("translation", || {
                    translate_text(
                        llm.as_ref(),
                        &result.transcript.text,
                        Some(language),
                        target,
                    )
                })?;
                usage.merge(&out.usage);
                if !out.unsupported.is_empty() {
                    warnings.push(format!(
                        "translation: states what the transcript does not: {}",
                        out.unsupported.join(", ")
                    ));
                }
                out.text
            }
        };
        let mut items: Vec<String> = Vec::new();
        if let Some(summary) = &result.summary {
            items.push(summary.recap.clone());
            items.push(summary.summary.clone());
            items.extend(summary.next_steps.iter().cloned());
        }
        if let Some(tasks) = &result.tasks {
            for task in tasks {
                items.push(task.text.clone());
                items.extend(task.due.clone());
            }
        }
        let translated = if items.is_empty() {
            Vec::new()
        } else {
            let llm = self.llm(timer)?;
            let (out, items_usage) = timer.time("translation", || {
                translate_items(llm.as_ref(), &items, Some(language), target)
            })?;
            usage.merge(&items_usage);
            out
        };
        let mut next = translated.into_iter();
        let summary = result.summary.as_ref().map(|s| CallSummary {
            recap: next.next().unwrap_or_default(),
            summary: next.next().unwrap_or_default(),
            next_steps: s.next_steps.iter().filter_map(|_| next.next()).collect(),
        });
        let tasks = result.tasks.as_ref().map(|tasks| {
            tasks
                .iter()
                .map(|t| Task {
                    text: next.next().unwrap_or_default(),
                    due: t.due.as_ref().and_then(|_| next.next()),
                    // Names and numbers are not translated.
                    who: t.who.clone(),
                    phone: t.phone.clone(),
                })
                .collect()
        });
        Ok(Translation {
            language: target.to_string(),
            text,
            summary,
            tasks,
        })
    }
}

/// A stage whose model answered unusably leaves a warning; broken models fail the recording.
fn stage_failed(
    result: &mut RecordingResult,
    stage: &str,
    error: LanguageError,
) -> Result<(), PipelineError> {
    match error {
        LanguageError::Unstructured { .. } | LanguageError::PromptTooLong { .. } => {
            warn!(stage, %error, "language stage gave no usable output");
            result.warnings.push(format!("{stage}: {error}"));
            Ok(())
        }
        other => Err(PipelineError::Language(other)),
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
