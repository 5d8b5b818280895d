//! `PolicyService` (admins write policy; users read their effective policy) and `UserService`
//! (admins place users; users and admins manage a user's priority topics).

use companion_core::Intent;
use companion_core::policy::{Level, PolicyEntry, Setting, UserProfile, Value};
use companion_proto::v1 as pb;
use companion_proto::v1::policy_service_server::PolicyService;
use companion_proto::v1::user_service_server::UserService;
use companion_store::Store;
use tonic::{Request, Response, Status};

use crate::auth::{Role, caller};
use crate::error::policy_status;

pub struct Admin {
    store: Store,
}

impl Admin {
    pub fn new(store: Store) -> Admin {
        Admin { store }
    }
}

fn level_from_proto(level: i32) -> Result<Level, Status> {
    match pb::PolicyLevel::try_from(level) {
        Ok(pb::PolicyLevel::Account) => Ok(Level::Account),
        Ok(pb::PolicyLevel::Site) => Ok(Level::Site),
        Ok(pb::PolicyLevel::Group) => Ok(Level::Group),
        Ok(pb::PolicyLevel::User) => Ok(Level::User),
        _ => Err(Status::invalid_argument(
            "level must be ACCOUNT, SITE, GROUP or USER",
        )),
    }
}

fn level_to_proto(level: Level) -> pb::PolicyLevel {
    match level {
        Level::Account => pb::PolicyLevel::Account,
        Level::Site => pb::PolicyLevel::Site,
        Level::Group => pb::PolicyLevel::Group,
        Level::User => pb::PolicyLevel::User,
    }
}

fn setting(name: &str) -> Result<Setting, Status> {
    name.parse::<Setting>()
        .map_err(|e: companion_core::policy::PolicyError| Status::invalid_argument(e.to_string()))
}

fn entry_to_proto(entry: &PolicyEntry) -> pb::PolicyEntry {
    pb::PolicyEntry {
        level: level_to_proto(entry.level) as i32,
        scope_id: entry.scope_id.clone(),
        setting: entry.setting.as_str().to_string(),
        value: entry.value.to_string(),
        locked: entry.locked,
    }
}

fn optional(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn user_to_proto(profile: &UserProfile) -> pb::User {
    pb::User {
        user_id: profile.user_id.clone(),
        account_id: profile.account_id.clone().unwrap_or_default(),
        site_id: profile.site_id.clone().unwrap_or_default(),
        group_id: profile.group_id.clone().unwrap_or_default(),
        preferred_language: profile.preferred_language.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl PolicyService for Admin {
    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::PolicyEntry>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin], "write policy")?;
        let entry = request
            .into_inner()
            .entry
            .ok_or_else(|| Status::invalid_argument("entry is required"))?;
        let setting = setting(&entry.setting)?;
        let value = Value::parse(setting, &entry.value)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let entry = PolicyEntry {
            level: level_from_proto(entry.level)?,
            scope_id: entry.scope_id.trim().to_string(),
            setting,
            value,
            locked: entry.locked,
        };
        self.store
            .set_policy(&caller.tenant, &entry)
            .await
            .map_err(policy_status)?;
        Ok(Response::new(entry_to_proto(&entry)))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin], "read policy entries")?;
        let req = request.into_inner();
        let entries = self
            .store
            .policies_at(
                &caller.tenant,
                level_from_proto(req.level)?,
                req.scope_id.trim(),
            )
            .await
            .map_err(policy_status)?;
        Ok(Response::new(pb::GetPolicyResponse {
            entries: entries.iter().map(entry_to_proto).collect(),
        }))
    }

    async fn clear_policy(
        &self,
        request: Request<pb::ClearPolicyRequest>,
    ) -> Result<Response<pb::ClearPolicyResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin], "write policy")?;
        let req = request.into_inner();
        let cleared = self
            .store
            .clear_policy(
                &caller.tenant,
                level_from_proto(req.level)?,
                req.scope_id.trim(),
                setting(&req.setting)?,
            )
            .await
            .map_err(policy_status)?;
        Ok(Response::new(pb::ClearPolicyResponse { cleared }))
    }

    async fn get_effective_policy(
        &self,
        request: Request<pb::GetEffectivePolicyRequest>,
    ) -> Result<Response<pb::EffectivePolicy>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin, Role::User], "read a user's policy")?;
        let user = caller
            .user_scope(&request.get_ref().user_id, true)?
            .unwrap_or_default();
        let (policy, _) = self
            .store
            .effective_policy(&caller.tenant, &user)
            .await
            .map_err(policy_status)?;
        let sources = policy
            .sources
            .iter()
            .map(|(setting, source)| pb::PolicyEntry {
                level: level_to_proto(source.level) as i32,
                scope_id: source.scope_id.clone(),
                setting: setting.as_str().to_string(),
                value: policy.value(*setting).to_string(),
                locked: source.locked,
            })
            .collect();
        Ok(Response::new(pb::EffectivePolicy {
            translation: policy.translation.enabled,
            translation_target: policy.translation.target.clone().unwrap_or_default(),
            call_summary: policy.call_summary,
            voicemail_tasks: policy.voicemail_tasks,
            voicemail_prioritization: policy.voicemail_prioritization,
            team_sms_thread_summary: policy.team_sms_thread_summary,
            language_allowlist: policy.language_allowlist.clone(),
            sources,
        }))
    }
}

#[tonic::async_trait]
impl UserService for Admin {
    async fn set_user(&self, request: Request<pb::User>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin], "place users")?;
        let user = request.into_inner();
        let profile = UserProfile {
            user_id: user.user_id.trim().to_string(),
            account_id: optional(&user.account_id),
            site_id: optional(&user.site_id),
            group_id: optional(&user.group_id),
            preferred_language: optional(&user.preferred_language),
        }
        .validated()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.store
            .upsert_user(&caller.tenant, &profile)
            .await
            .map_err(policy_status)?;
        Ok(Response::new(user_to_proto(&profile)))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin, Role::User], "read users")?;
        let user = caller
            .user_scope(&request.get_ref().user_id, true)?
            .unwrap_or_default();
        let profile = self
            .store
            .user(&caller.tenant, &user)
            .await
            .map_err(policy_status)?
            .ok_or_else(|| Status::not_found(format!("no user {user:?}")))?;
        Ok(Response::new(user_to_proto(&profile)))
    }

    async fn set_intent(
        &self,
        request: Request<pb::SetIntentRequest>,
    ) -> Result<Response<pb::Intent>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin, Role::User], "manage priority topics")?;
        let req = request.into_inner();
        let user = caller.user_scope(&req.user_id, true)?.unwrap_or_default();
        let intent = req
            .intent
            .ok_or_else(|| Status::invalid_argument("intent is required"))?;
        let intent = Intent {
            name: intent.name,
            description: intent.description,
        };
        self.store
            .set_intent(&caller.tenant, &user, &intent)
            .await
            .map_err(policy_status)?;
        Ok(Response::new(pb::Intent {
            name: intent.name,
            description: intent.description,
        }))
    }

    async fn list_intents(
        &self,
        request: Request<pb::ListIntentsRequest>,
    ) -> Result<Response<pb::ListIntentsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin, Role::User], "read priority topics")?;
        let user = caller
            .user_scope(&request.get_ref().user_id, true)?
            .unwrap_or_default();
        let intents = self
            .store
            .intents(&caller.tenant, &user)
            .await
            .map_err(policy_status)?;
        Ok(Response::new(pb::ListIntentsResponse {
            intents: intents
                .into_iter()
                .map(|i| pb::Intent {
                    name: i.name,
                    description: i.description,
                })
                .collect(),
        }))
    }

    async fn remove_intent(
        &self,
        request: Request<pb::RemoveIntentRequest>,
    ) -> Result<Response<pb::RemoveIntentResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(&[Role::Admin, Role::User], "manage priority topics")?;
        let req = request.into_inner();
        let user = caller.user_scope(&req.user_id, true)?.unwrap_or_default();
        let removed = self
            .store
            .remove_intent(&caller.tenant, &user, req.name.trim())
            .await
            .map_err(policy_status)?;
        Ok(Response::new(pb::RemoveIntentResponse { removed }))
    }
}
