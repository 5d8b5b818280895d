//! Admin policy, the user directory and users' priority topics (intents), per tenant.
//!
//! Everything written here is validated with the rules in [`companion_core::policy`] first, and
//! everything read back is validated again, so a hand-edited or future-format row surfaces as a
//! clear error instead of silently changing what a user gets.

use companion_core::policy::{
    EffectivePolicy, Level, PolicyEntry, PolicyError, Scope, Setting, UserProfile, Value, check_id,
    check_intent, resolve,
};
use companion_core::{Classify, ErrorKind, Intent};
use tracing::{debug, warn};

use super::{Store, StoreError, now_ms};

/// Why a policy, directory or intent operation failed: the store itself, or input that the
/// policy rules refuse.
#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    #[error("stored policy {setting} at {level} {scope_id} is unreadable: {reason}")]
    Corrupt {
        level: String,
        scope_id: String,
        setting: String,
        reason: String,
    },
}

impl From<sqlx::Error> for PolicyStoreError {
    fn from(e: sqlx::Error) -> Self {
        PolicyStoreError::Store(StoreError::Database(e))
    }
}

impl Classify for PolicyStoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            PolicyStoreError::Store(e) => e.kind(),
            PolicyStoreError::Invalid(_) => ErrorKind::InvalidArgument,
            PolicyStoreError::Corrupt { .. } => ErrorKind::Store,
        }
    }
}

impl Store {
    /// Sets (or replaces) one policy value at one level for one scope.
    pub async fn set_policy(
        &self,
        tenant: &str,
        entry: &PolicyEntry,
    ) -> Result<(), PolicyStoreError> {
        let tenant = check_id("tenant id", tenant)?;
        let entry = entry.clone().validated()?;
        let value = serde_json::to_string(&entry.value).map_err(StoreError::from)?;
        on_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO policies (tenant_id, level, scope_id, setting, value, locked, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, level, scope_id, setting) DO UPDATE SET
                 value = excluded.value, locked = excluded.locked, updated_at = excluded.updated_at",
        )
        .bind(&tenant)
        .bind(entry.level.as_str())
        .bind(&entry.scope_id)
        .bind(entry.setting.as_str())
        .bind(value)
        .bind(entry.locked)
        .bind(now_ms())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        debug!(tenant, level = %entry.level, scope_id = entry.scope_id, setting = %entry.setting,
            value = %entry.value, locked = entry.locked, "policy set");
        Ok(())
    }

    /// Removes one policy value; returns whether it was set.
    pub async fn clear_policy(
        &self,
        tenant: &str,
        level: Level,
        scope_id: &str,
        setting: Setting,
    ) -> Result<bool, PolicyStoreError> {
        let done = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM policies
             WHERE tenant_id = $1 AND level = $2 AND scope_id = $3 AND setting = $4",
        )
        .bind(tenant.trim())
        .bind(level.as_str())
        .bind(scope_id.trim())
        .bind(setting.as_str())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done > 0)
    }

    /// The values set at one level for one scope, ordered by setting name.
    pub async fn policies_at(
        &self,
        tenant: &str,
        level: Level,
        scope_id: &str,
    ) -> Result<Vec<PolicyEntry>, PolicyStoreError> {
        let rows: Vec<PolicyRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT level, scope_id, setting, value, locked FROM policies
             WHERE tenant_id = $1 AND level = $2 AND scope_id = $3 ORDER BY setting",
        )
        .bind(tenant.trim())
        .bind(level.as_str())
        .bind(scope_id.trim())
        .fetch_all(pool)
        .await)?;
        entries_from_rows(rows)
    }

    /// Adds a user to the directory or replaces their entry.
    pub async fn upsert_user(
        &self,
        tenant: &str,
        profile: &UserProfile,
    ) -> Result<(), PolicyStoreError> {
        let tenant = check_id("tenant id", tenant)?;
        let profile = profile.clone().validated()?;
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO users (tenant_id, user_id, account_id, site_id, group_id,
                 preferred_language, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET
                 account_id = excluded.account_id, site_id = excluded.site_id,
                 group_id = excluded.group_id, preferred_language = excluded.preferred_language,
                 updated_at = excluded.updated_at",
        )
        .bind(&tenant)
        .bind(&profile.user_id)
        .bind(&profile.account_id)
        .bind(&profile.site_id)
        .bind(&profile.group_id)
        .bind(&profile.preferred_language)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        debug!(tenant, user_id = profile.user_id, "user upserted");
        Ok(())
    }

    /// A user's directory entry, if they have one.
    pub async fn user(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Option<UserProfile>, PolicyStoreError> {
        let row: Option<UserRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT user_id, account_id, site_id, group_id, preferred_language FROM users
             WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.trim())
        .bind(user_id.trim())
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(
            |(user_id, account_id, site_id, group_id, preferred_language)| UserProfile {
                user_id,
                account_id,
                site_id,
                group_id,
                preferred_language,
            },
        ))
    }

    /// What a user gets, with their directory entry (for the preferred language). A user not in
    /// the directory belongs to no account, site or group: only their user-level entries apply.
    pub async fn effective_policy(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<(EffectivePolicy, Option<UserProfile>), PolicyStoreError> {
        let user_id = check_id("user id", user_id)?;
        let profile = self.user(tenant, &user_id).await?;
        let scope = profile
            .as_ref()
            .map_or_else(|| Scope::user_only(user_id.as_str()), UserProfile::scope);
        let rows: Vec<PolicyRow> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT level, scope_id, setting, value, locked FROM policies
             WHERE tenant_id = $1 AND (
                 (level = 'account' AND scope_id = $2) OR (level = 'site' AND scope_id = $3)
                 OR (level = 'group' AND scope_id = $4) OR (level = 'user' AND scope_id = $5))",
        )
        .bind(tenant.trim())
        .bind(scope.id_at(Level::Account))
        .bind(scope.id_at(Level::Site))
        .bind(scope.id_at(Level::Group))
        .bind(scope.id_at(Level::User))
        .fetch_all(pool)
        .await)?;
        let entries = entries_from_rows(rows)?;
        Ok((resolve(&scope, &entries), profile))
    }

    /// Adds a priority topic for a user, replacing the description of one with the same name.
    pub async fn set_intent(
        &self,
        tenant: &str,
        user_id: &str,
        intent: &Intent,
    ) -> Result<(), PolicyStoreError> {
        let tenant = check_id("tenant id", tenant)?;
        let user_id = check_id("user id", user_id)?;
        let intent = check_intent(intent)?;
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO intents (tenant_id, user_id, name, description, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, user_id, name) DO UPDATE SET
                 description = excluded.description",
        )
        .bind(&tenant)
        .bind(&user_id)
        .bind(&intent.name)
        .bind(&intent.description)
        .bind(now_ms())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(())
    }

    /// Removes a user's priority topic; returns whether it existed.
    pub async fn remove_intent(
        &self,
        tenant: &str,
        user_id: &str,
        name: &str,
    ) -> Result<bool, PolicyStoreError> {
        let done = on_pool!(self, |pool| sqlx::query(
            "DELETE FROM intents WHERE tenant_id = $1 AND user_id = $2 AND name = $3"
        )
        .bind(tenant.trim())
        .bind(user_id.trim())
        .bind(name.trim())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
        Ok(done > 0)
    }

    /// A user's priority topics, ordered by name.
    pub async fn intents(
        &self,
        tenant: &str,
        user_id: &str,
    ) -> Result<Vec<Intent>, PolicyStoreError> {
        let rows: Vec<(String, String)> = on_pool!(self, |pool| sqlx::query_as(
            "SELECT name, description FROM intents
             WHERE tenant_id = $1 AND user_id = $2 ORDER BY name",
        )
        .bind(tenant.trim())
        .bind(user_id.trim())
        .fetch_all(pool)
        .await)?;
        Ok(rows
            .into_iter()
            .map(|(name, description)| Intent { name, description })
            .collect())
    }
}

/// (level, scope_id, setting, value, locked)
type PolicyRow = (String, String, String, String, bool);

/// (user_id, account_id, site_id, group_id, preferred_language)
type UserRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Decodes policy rows. A setting this build does not know (written by a newer one) is skipped
/// with a warning: it cannot affect anything this build does. Any other unreadable row is an
/// error, because dropping a locked value would hand users features an administrator refused.
fn entries_from_rows(rows: Vec<PolicyRow>) -> Result<Vec<PolicyEntry>, PolicyStoreError> {
    let mut entries = Vec::with_capacity(rows.len());
    for (level, scope_id, setting, json, locked) in rows {
        let corrupt = |reason: String| PolicyStoreError::Corrupt {
            level: level.clone(),
            scope_id: scope_id.clone(),
            setting: setting.clone(),
            reason,
        };
        let Ok(known_setting) = setting.parse::<Setting>() else {
            warn!(
                level,
                scope_id, setting, "skipping a policy for an unknown setting"
            );
            continue;
        };
        let parsed_level = level.parse::<Level>().map_err(|e| corrupt(e.to_string()))?;
        let value = serde_json::from_str::<Value>(&json)
            .map_err(|e| corrupt(e.to_string()))?
            .validated(known_setting)
            .map_err(|e| corrupt(e.to_string()))?;
        entries.push(PolicyEntry {
            level: parsed_level,
            scope_id: scope_id.clone(),
            setting: known_setting,
            value,
            locked,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestDb, backend_tests};

    backend_tests!(
        policies_are_set_replaced_listed_and_cleared,
        values_that_do_not_fit_their_setting_are_refused,
        the_directory_places_users_in_the_hierarchy,
        profiles_are_validated_and_replaced,
        corrupt_rows_are_reported_and_unknown_settings_skipped,
        intents_are_kept_per_user_by_name,
    );

    fn entry(level: Level, id: &str, setting: Setting, value: &str, locked: bool) -> PolicyEntry {
        PolicyEntry {
            level,
            scope_id: id.into(),
            setting,
            value: Value::parse(setting, value).unwrap(),
            locked,
        }
    }

    fn alice() -> UserProfile {
        UserProfile {
            user_id: "alice".into(),
            account_id: Some("acme".into()),
            site_id: Some("paris".into()),
            group_id: Some("sales".into()),
            preferred_language: Some("fr".into()),
        }
    }

    async fn policies_are_set_replaced_listed_and_cleared(db: &TestDb) {
        let store = &db.store;
        let site = |s, v, l| entry(Level::Site, "paris", s, v, l);
        store
            .set_policy("t1", &site(Setting::Translation, "es", false))
            .await
            .unwrap();
        store
            .set_policy("t1", &site(Setting::CallSummary, "off", false))
            .await
            .unwrap();
        // Replacing keeps one row per setting.
        store
            .set_policy("t1", &site(Setting::CallSummary, "on", true))
            .await
            .unwrap();
        // Another tenant's values are separate.
        store
            .set_policy("t2", &site(Setting::CallSummary, "off", false))
            .await
            .unwrap();

        let listed = store.policies_at("t1", Level::Site, "paris").await.unwrap();
        assert_eq!(
            listed,
            vec![
                site(Setting::CallSummary, "on", true),
                site(Setting::Translation, "es", false)
            ]
        );
        assert!(
            store
                .clear_policy("t1", Level::Site, "paris", Setting::CallSummary)
                .await
                .unwrap()
        );
        assert!(
            !store
                .clear_policy("t1", Level::Site, "paris", Setting::CallSummary)
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .policies_at("t1", Level::Site, "paris")
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            store
                .policies_at("t2", Level::Site, "paris")
                .await
                .unwrap()
                .len(),
            1
        );
    }

    async fn values_that_do_not_fit_their_setting_are_refused(db: &TestDb) {
        let store = &db.store;
        let bad = PolicyEntry {
            level: Level::Account,
            scope_id: "acme".into(),
            setting: Setting::CallSummary,
            value: Value::Languages(vec!["en".into()]),
            locked: false,
        };
        let err = store.set_policy("t1", &bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(
            store
                .policies_at("t1", Level::Account, "acme")
                .await
                .unwrap()
                .is_empty()
        );
    }

    async fn the_directory_places_users_in_the_hierarchy(db: &TestDb) {
        let store = &db.store;
        store.upsert_user("t1", &alice()).await.unwrap();
        store
            .set_policy(
                "t1",
                &entry(Level::Account, "acme", Setting::CallSummary, "off", true),
            )
            .await
            .unwrap();
        store
            .set_policy(
                "t1",
                &entry(Level::User, "alice", Setting::CallSummary, "on", false),
            )
            .await
            .unwrap();
        store
            .set_policy(
                "t1",
                &entry(Level::Group, "sales", Setting::Translation, "on", false),
            )
            .await
            .unwrap();
        store
            .set_policy(
                "t1",
                &entry(
                    Level::Group,
                    "support",
                    Setting::VoicemailTasks,
                    "off",
                    true,
                ),
            )
            .await
            .unwrap();

        let (policy, profile) = store.effective_policy("t1", "alice").await.unwrap();
        assert_eq!(profile, Some(alice()));
        assert!(
            !policy.call_summary,
            "the account lock wins over the user's value"
        );
        assert_eq!(
            policy.source(Setting::CallSummary).unwrap().level,
            Level::Account
        );
        assert!(
            policy.voicemail_tasks,
            "another group's lock does not apply"
        );
        assert_eq!(policy.translation_target(Some("fr")), Some("fr".into()));

        // Moving alice to support changes what she gets.
        let mut moved = alice();
        moved.group_id = Some("support".into());
        store.upsert_user("t1", &moved).await.unwrap();
        let (policy, _) = store.effective_policy("t1", "alice").await.unwrap();
        assert!(!policy.voicemail_tasks);
        assert!(!policy.translation.enabled);

        // Outside the directory only user-level values apply.
        let (policy, profile) = store.effective_policy("t2", "alice").await.unwrap();
        assert_eq!((policy, profile), (EffectivePolicy::default(), None));
        store
            .set_policy(
                "t1",
                &entry(Level::User, "bob", Setting::VoicemailTasks, "off", false),
            )
            .await
            .unwrap();
        let (policy, profile) = store.effective_policy("t1", "bob").await.unwrap();
        assert!(profile.is_none());
        assert!(!policy.voicemail_tasks && policy.call_summary);
    }

    async fn profiles_are_validated_and_replaced(db: &TestDb) {
        let store = &db.store;
        assert_eq!(store.user("t1", "alice").await.unwrap(), None);
        let bad = UserProfile {
            preferred_language: Some("french".into()),
            ..alice()
        };
        assert!(matches!(
            store.upsert_user("t1", &bad).await,
            Err(PolicyStoreError::Invalid(PolicyError::InvalidLanguage(_)))
        ));
        store.upsert_user("t1", &alice()).await.unwrap();
        let replaced = UserProfile {
            user_id: "alice".into(),
            preferred_language: Some("DE".into()),
            ..UserProfile::default()
        };
        store.upsert_user("t1", &replaced).await.unwrap();
        let stored = store.user("t1", "alice").await.unwrap().unwrap();
        assert_eq!(stored.account_id, None);
        assert_eq!(stored.preferred_language.as_deref(), Some("de"));
    }

    async fn corrupt_rows_are_reported_and_unknown_settings_skipped(db: &TestDb) {
        let store = &db.store;
        for (setting, value) in [("call_summary", "\"yes\""), ("future_feature", "42")] {
            on_pool!(store, |pool| sqlx::query(
                "INSERT INTO policies (tenant_id, level, scope_id, setting, value, locked, updated_at)
                 VALUES ('t1', 'user', 'alice', $1, $2, FALSE, 0)",
            )
            .bind(setting)
            .bind(value)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
            .unwrap();
        }
        let err = store.effective_policy("t1", "alice").await.unwrap_err();
        assert!(matches!(err, PolicyStoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("call_summary"), "{err}");
        store
            .clear_policy("t1", Level::User, "alice", Setting::CallSummary)
            .await
            .unwrap();
        let (policy, _) = store.effective_policy("t1", "alice").await.unwrap();
        assert_eq!(policy, EffectivePolicy::default());
    }

    async fn intents_are_kept_per_user_by_name(db: &TestDb) {
        let store = &db.store;
        let intent = |name: &str, description: &str| Intent {
            name: name.into(),
            description: description.into(),
        };
        store
            .set_intent("t1", "alice", &intent("renewal", "contract renewal"))
            .await
            .unwrap();
        store
            .set_intent("t1", "alice", &intent("billing", "an invoice is wrong"))
            .await
            .unwrap();
        store
            .set_intent(
                "t1",
                "alice",
                &intent(" renewal ", "the contract is up for renewal"),
            )
            .await
            .unwrap();
        store
            .set_intent("t1", "bob", &intent("outage", "the service is down"))
            .await
            .unwrap();
        assert!(
            store
                .set_intent("t1", "alice", &intent("empty", " "))
                .await
                .is_err()
        );
        assert_eq!(
            store.intents("t1", "alice").await.unwrap(),
            vec![
                intent("billing", "an invoice is wrong"),
                intent("renewal", "the contract is up for renewal")
            ]
        );
        assert!(store.remove_intent("t1", "alice", "billing").await.unwrap());
        assert!(!store.remove_intent("t1", "alice", "billing").await.unwrap());
        assert_eq!(store.intents("t1", "alice").await.unwrap().len(), 1);
        assert_eq!(store.intents("t1", "bob").await.unwrap().len(), 1);
    }
}
