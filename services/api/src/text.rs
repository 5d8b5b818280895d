//! `TextService`: translation and SMS thread summaries on the local language model. The model
//! loads on first use and runs on a blocking thread; one request at a time uses it, and a
//! request that waits too long is told the server is busy instead of queueing forever.

use std::sync::Arc;
use std::time::Duration;

use companion_core::SmsMessage;
use companion_language::{
    Error as LanguageError, LanguageModels, summarize_thread, translate_text,
};
use companion_proto::v1 as pb;
use companion_proto::v1::text_service_server::TextService;
use companion_store::Store;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::error::policy_status;

/// Longest text accepted for translation, in bytes.
const MAX_TEXT_BYTES: usize = 32 * 1024;
/// How long a request waits for the model before it is told to come back.
const BUSY_WAIT: Duration = Duration::from_secs(60);

pub struct Text {
    store: Store,
    models: Option<Arc<LanguageModels>>,
    permits: Arc<Semaphore>,
}

impl Text {
    /// `models`: `None` answers UNIMPLEMENTED (the server runs without language models).
    pub fn new(store: Store, models: Option<Arc<LanguageModels>>) -> Text {
        Text {
            store,
            models,
            permits: Arc::new(Semaphore::new(1)),
        }
    }

    /// Runs `work` with the loaded language model on a blocking thread.
    async fn with_llm<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn companion_language::TextGenerator) -> Result<T, LanguageError>
        + Send
        + 'static,
    ) -> Result<T, Status> {
        let models = self
            .models
            .clone()
            .ok_or_else(|| Status::unimplemented("this server runs without language models"))?;
        let _permit = tokio::time::timeout(BUSY_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Status::resource_exhausted("the language model is busy; try again"))?
            .map_err(|_| Status::unavailable("shutting down"))?;
        tokio::task::spawn_blocking(move || {
            let llm = models.llm().map_err(|e| Status::internal(e.to_string()))?;
            work(llm.model.as_ref()).map_err(|e| match e {
                LanguageError::InvalidInput(m) => Status::invalid_argument(m),
                other => Status::internal(other.to_string()),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("the language model crashed: {e}")))?
    }
}

#[tonic::async_trait]
impl TextService for Text {
    async fn translate(
        &self,
        request: Request<pb::TranslateRequest>,
    ) -> Result<Response<pb::TranslateResponse>, Status> {
        caller(&request)?;
        let req = request.into_inner();
        if req.text.len() > MAX_TEXT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "text over {MAX_TEXT_BYTES} bytes"
            )));
        }
        let to = companion_core::policy::language_code(&req.target_language)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let out = self
            .with_llm(move |llm| translate_text(llm, &req.text, None, &to))
            .await?;
        Ok(Response::new(pb::TranslateResponse {
            text: out.text,
            source_language: out.source_language.unwrap_or_default(),
            warnings: out
                .unsupported
                .iter()
                .map(|f| format!("not in the original: {f}"))
                .collect(),
        }))
    }

    async fn summarize_sms_thread(
        &self,
        request: Request<pb::SummarizeSmsThreadRequest>,
    ) -> Result<Response<pb::SummarizeSmsThreadResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        if let Some(user) = caller.user_scope(&req.user_id, false)? {
            let (policy, _) = self
                .store
                .effective_policy(&caller.tenant, &user)
                .await
                .map_err(policy_status)?;
            if !policy.team_sms_thread_summary {
                return Err(Status::failed_precondition(
                    "team SMS thread summaries are turned off by policy for this user",
                ));
            }
        }
        let total: usize = req.messages.iter().map(|m| m.text.len()).sum();
        if total > MAX_TEXT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "thread over {MAX_TEXT_BYTES} bytes"
            )));
        }
        let messages: Vec<SmsMessage> = req
            .messages
            .into_iter()
            .map(|m| SmsMessage {
                sender: m.sender,
                time: (!m.time.trim().is_empty()).then_some(m.time),
                text: m.text,
            })
            .collect();
        let out = self
            .with_llm(move |llm| summarize_thread(llm, &messages, None))
            .await?;
        Ok(Response::new(pb::SummarizeSmsThreadResponse {
            summary: out.summary.summary,
            open_question: out.summary.open_question.unwrap_or_default(),
            language: out.language.unwrap_or_default(),
        }))
    }
}
