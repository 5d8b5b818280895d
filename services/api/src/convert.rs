//! Store rows and pipeline results → the messages of `recording.proto`.

use companion_core::{CallSummary, RecordingKind, Task};
use companion_proto::v1 as pb;
use companion_store::{JobState, RecordingView, StoredOutcome};

pub fn kind_to_proto(kind: RecordingKind) -> pb::RecordingKind {
    match kind {
        RecordingKind::Voicemail => pb::RecordingKind::Voicemail,
        RecordingKind::Call => pb::RecordingKind::Call,
    }
}

pub fn kind_from_proto(kind: i32) -> Option<RecordingKind> {
    match pb::RecordingKind::try_from(kind).ok()? {
        pb::RecordingKind::Voicemail => Some(RecordingKind::Voicemail),
        pb::RecordingKind::Call => Some(RecordingKind::Call),
        pb::RecordingKind::Unspecified => None,
    }
}

pub fn status_to_proto(state: JobState) -> pb::JobStatus {
    match state {
        JobState::Queued => pb::JobStatus::Queued,
        JobState::Processing => pb::JobStatus::Processing,
        JobState::Done => pb::JobStatus::Done,
        JobState::Failed => pb::JobStatus::Failed,
    }
}

fn summary(s: &CallSummary) -> pb::CallSummary {
    pb::CallSummary {
        recap: s.recap.clone(),
        next_steps: s.next_steps.clone(),
        summary: s.summary.clone(),
    }
}

fn tasks(tasks: &[Task]) -> Vec<pb::Task> {
    tasks
        .iter()
        .map(|t| pb::Task {
            text: t.text.clone(),
            who: t.who.clone().unwrap_or_default(),
            phone: t.phone.clone().unwrap_or_default(),
            due: t.due.clone().unwrap_or_default(),
        })
        .collect()
}

/// A recording's latest job with its result, as the API returns it.
pub fn view_to_proto(view: &RecordingView) -> pb::RecordingResult {
    let job = &view.job;
    let mut out = pb::RecordingResult {
        recording_id: job.recording_id.clone(),
        user_id: job.user_id.clone().unwrap_or_default(),
        kind: kind_to_proto(job.kind) as i32,
        job_id: job.job_id.clone(),
        status: status_to_proto(job.state) as i32,
        attempts: job.attempts,
        failure: job.error.as_ref().map(|e| pb::Failure {
            kind: e.kind.as_str().to_string(),
            message: e.message.clone(),
        }),
        version: view.version.unwrap_or(0),
        created_at_ms: job.created_at_ms,
        ..Default::default()
    };
    let Some(StoredOutcome::Done(result)) = &view.result else {
        return out;
    };
    out.duration_s = result.duration_s;
    out.speech = result.speech;
    if let Some(language) = &result.language {
        out.language = language.code.clone();
        out.language_probability = language.probability;
    }
    out.transcript = Some(pb::Transcript {
        text: result.transcript.text.clone(),
        segments: result
            .transcript
            .segments
            .iter()
            .map(|s| pb::Segment {
                start_s: s.start_s,
                end_s: s.end_s,
                speaker: s.speaker.clone().unwrap_or_default(),
                text: s.text.clone(),
            })
            .collect(),
    });
    out.summary = result.summary.as_ref().map(summary);
    out.has_tasks = result.tasks.is_some();
    out.tasks = result.tasks.as_deref().map(tasks).unwrap_or_default();
    out.priority = result.priority.as_ref().map(|p| pb::Priority {
        prioritized: p.prioritized,
        matches: p
            .matches
            .iter()
            .map(|m| pb::IntentMatch {
                intent: m.intent.clone(),
                score: m.score,
                reason: m.reason.clone(),
            })
            .collect(),
    });
    out.translation = result.translation.as_ref().map(|t| pb::Translation {
        language: t.language.clone(),
        text: t.text.clone(),
        summary: t.summary.as_ref().map(summary),
        tasks: t.tasks.as_deref().map(tasks).unwrap_or_default(),
    });
    out.warnings = result.warnings.clone();
    out.timings_ms = result
        .timings_ms
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    out.result_json = serde_json::to_string(result.as_ref()).unwrap_or_default();
    out
}
