//! What the language stages produce from a transcript: call summaries, voicemail tasks,
//! priority matches against a user's topics, and translations of all of them.

use serde::{Deserialize, Serialize};

/// A call summary: the quick recap, the next steps and a short paragraph.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSummary {
    /// One or two sentences.
    pub recap: String,
    pub next_steps: Vec<String>,
    /// A short paragraph.
    pub summary: String,
}

/// One action a voicemail asks of its user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// What to do.
    pub text: String,
    /// Who asked, when the caller said so.
    pub who: Option<String>,
    /// The callback number as said in the message.
    pub phone: Option<String>,
    /// When it is due, as said in the message ("Friday at 3 pm").
    pub due: Option<String>,
}

/// A user's priority topic: voicemails about it are flagged for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub name: String,
    /// What a message about this topic sounds like; this is what messages are scored against.
    pub description: String,
}

/// A topic a voicemail matched, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntentMatch {
    pub intent: String,
    /// Similarity in [-1, 1]; at or above the matcher's threshold.
    pub score: f32,
    /// The sentence of the message that matched best.
    pub reason: String,
}

/// Whether a voicemail is prioritized for its user, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Priority {
    pub prioritized: bool,
    /// Matches, best first.
    pub matches: Vec<IntentMatch>,
}

/// One text message of a team SMS conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsMessage {
    pub sender: String,
    /// When it was sent, as the thread gives it (RFC 3339 is typical).
    #[serde(default)]
    pub time: Option<String>,
    pub text: String,
}

/// What an agent taking over a team SMS conversation needs first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSummary {
    /// Two or three sentences.
    pub summary: String,
    /// What the conversation waits on: the questions and requests of its last message, in the
    /// writer's words; `None` when the last message asks nothing.
    pub open_question: Option<String>,
}
