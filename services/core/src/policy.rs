//! Admin policy: which AI features a user gets, set by administrators at account, site, group
//! and user level (the model Zoom exposes), and the user directory entry that places a user in
//! that hierarchy.
//!
//! Resolution is a pure function of the entries that apply to one user, so the store, the API
//! and the worker all answer "what does this user get" the same way: top-down, a locked value
//! at a higher level wins and no lower level can override it (the highest lock wins);
//! otherwise the most specific level that sets the value wins; otherwise the default.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Intent;

/// A rejected policy name or value. The messages list what is allowed, because they are shown
/// to administrators typing commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown level {0:?} (expected one of: {names})", names = Level::names())]
    UnknownLevel(String),
    #[error("unknown setting {0:?} (expected one of: {names})", names = Setting::names())]
    UnknownSetting(String),
    #[error("invalid value {value:?} for {setting} (expected {expected})", expected = setting.expected())]
    InvalidValue { setting: Setting, value: String },
    #[error(
        "invalid language code {0:?} (expected an ISO 639 code of 2 or 3 letters, like en or es)"
    )]
    InvalidLanguage(String),
    #[error("a value of the form {value} does not fit the setting {setting} (expected {expected})", expected = setting.expected())]
    Mismatch { setting: Setting, value: String },
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("intent name {0:?} must not contain tabs or line breaks")]
    IntentName(String),
}

/// Where a policy is set, from the broadest to the most specific. The derived order is the
/// resolution order: `Account < Site < Group < User`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Account,
    Site,
    Group,
    User,
}

impl Level {
    /// Every level, top-down.
    pub const ALL: [Level; 4] = [Level::Account, Level::Site, Level::Group, Level::User];

    /// The stable name used in the database, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Account => "account",
            Level::Site => "site",
            Level::Group => "group",
            Level::User => "user",
        }
    }

    fn names() -> String {
        Level::ALL.map(Level::as_str).join(", ")
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| PolicyError::UnknownLevel(s.to_string()))
    }
}

/// What a policy controls. The names are stable: they are stored and typed by administrators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    /// Translate transcripts and insights, and to which language.
    Translation,
    CallSummary,
    VoicemailTasks,
    VoicemailPrioritization,
    TeamSmsThreadSummary,
    /// The languages spoken-language detection may choose from; short clips are misidentified
    /// too often without one.
    LanguageAllowlist,
}

impl Setting {
    pub const ALL: [Setting; 6] = [
        Setting::Translation,
        Setting::CallSummary,
        Setting::VoicemailTasks,
        Setting::VoicemailPrioritization,
        Setting::TeamSmsThreadSummary,
        Setting::LanguageAllowlist,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Setting::Translation => "translation",
            Setting::CallSummary => "call_summary",
            Setting::VoicemailTasks => "voicemail_tasks",
            Setting::VoicemailPrioritization => "voicemail_prioritization",
            Setting::TeamSmsThreadSummary => "team_sms_thread_summary",
            Setting::LanguageAllowlist => "language_allowlist",
        }
    }

    /// Whether the setting is a plain on/off feature switch.
    pub fn is_feature(self) -> bool {
        !matches!(self, Setting::Translation | Setting::LanguageAllowlist)
    }

    fn names() -> String {
        Setting::ALL.map(Setting::as_str).join(", ")
    }

    /// The accepted textual values, for error messages.
    fn expected(self) -> &'static str {
        match self {
            Setting::Translation => {
                "off, on (translate to the user's preferred language) or a target language code like es"
            }
            Setting::LanguageAllowlist => {
                "a comma-separated list of language codes like en,es,de, or any"
            }
            _ => "on, off, true or false",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Setting {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().replace('-', "_");
        Setting::ALL
            .into_iter()
            .find(|x| x.as_str().eq_ignore_ascii_case(&wanted))
            .ok_or_else(|| PolicyError::UnknownSetting(s.to_string()))
    }
}

/// A policy value. Stored as JSON: `true`, `{"enabled":true,"target":"es"}`, `["en","es"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An AI feature switch.
    Enabled(bool),
    /// Translation on or off; without a target it translates to the user's preferred language.
    Translation {
        enabled: bool,
        target: Option<String>,
    },
    /// Allowed spoken languages; empty means any.
    Languages(Vec<String>),
}

impl Value {
    /// Parses the CLI form of a value for `setting` (see [`Setting`] for the forms).
    pub fn parse(setting: Setting, text: &str) -> Result<Value, PolicyError> {
        let invalid = || PolicyError::InvalidValue {
            setting,
            value: text.to_string(),
        };
        let word = text.trim().to_ascii_lowercase();
        match setting {
            Setting::Translation => match word.as_str() {
                "off" | "false" => Ok(Value::Translation {
                    enabled: false,
                    target: None,
                }),
                "on" | "true" => Ok(Value::Translation {
                    enabled: true,
                    target: None,
                }),
                code => Ok(Value::Translation {
                    enabled: true,
                    target: Some(language_code(code).map_err(|_| invalid())?),
                }),
            },
            Setting::LanguageAllowlist => {
                if word == "any" {
                    return Ok(Value::Languages(Vec::new()));
                }
                let codes: Vec<&str> = word
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect();
                if codes.is_empty() {
                    return Err(invalid());
                }
                language_list(codes).map(Value::Languages)
            }
            _ => match word.as_str() {
                "on" | "true" => Ok(Value::Enabled(true)),
                "off" | "false" => Ok(Value::Enabled(false)),
                _ => Err(invalid()),
            },
        }
    }

    /// Checks that the value has the shape `setting` takes and normalizes its language codes.
    /// Values come from JSON (the database, the API) as well as from [`Value::parse`], so every
    /// writer and reader goes through this.
    pub fn validated(self, setting: Setting) -> Result<Value, PolicyError> {
        match (setting, self) {
            (Setting::Translation, Value::Translation { enabled, target }) => {
                Ok(Value::Translation {
                    enabled,
                    target: target.as_deref().map(language_code).transpose()?,
                })
            }
            (Setting::LanguageAllowlist, Value::Languages(codes)) => {
                language_list(codes.iter().map(String::as_str)).map(Value::Languages)
            }
            (s, Value::Enabled(on)) if s.is_feature() => Ok(Value::Enabled(on)),
            (setting, value) => Err(PolicyError::Mismatch {
                setting,
                value: value.to_string(),
            }),
        }
    }
}

/// The CLI form, so `get` output can be pasted back into `set`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Enabled(true)
            | Value::Translation {
                enabled: true,
                target: None,
            } => f.write_str("on"),
            Value::Enabled(false) | Value::Translation { enabled: false, .. } => f.write_str("off"),
            Value::Translation {
                enabled: true,
                target: Some(code),
            } => f.write_str(code),
            Value::Languages(codes) if codes.is_empty() => f.write_str("any"),
            Value::Languages(codes) => f.write_str(&codes.join(",")),
        }
    }
}

/// Validates and lowercases a language code: 2 or 3 ASCII letters (ISO 639-1, or 639-3 for
/// languages without a two-letter code, as Whisper names some).
pub fn language_code(code: &str) -> Result<String, PolicyError> {
    let trimmed = code.trim();
    if (2..=3).contains(&trimmed.len()) && trimmed.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(PolicyError::InvalidLanguage(code.to_string()))
    }
}

/// Validates a list of codes, keeping the first occurrence of each in the given order.
fn language_list<'a>(codes: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, PolicyError> {
    let mut out: Vec<String> = Vec::new();
    for code in codes {
        let code = language_code(code)?;
        if !out.contains(&code) {
            out.push(code);
        }
    }
    Ok(out)
}

/// Checks an id (a scope or user id): ids are opaque, but an empty one is always a mistake.
pub fn check_id(what: &'static str, id: &str) -> Result<String, PolicyError> {
    let id = id.trim();
    if id.is_empty() {
        Err(PolicyError::Empty(what))
    } else {
        Ok(id.to_string())
    }
}

/// Trims and checks a user's priority topic. Names are single-line so intents round-trip
/// through the `name<TAB>description` files administrators import.
pub fn check_intent(intent: &Intent) -> Result<Intent, PolicyError> {
    let name = intent.name.trim();
    let description = intent.description.trim();
    if name.is_empty() {
        return Err(PolicyError::Empty("intent name"));
    }
    if description.is_empty() {
        return Err(PolicyError::Empty("intent description"));
    }
    if name.contains(['\t', '\n', '\r']) {
        return Err(PolicyError::IntentName(name.to_string()));
    }
    Ok(Intent {
        name: name.to_string(),
        description: description.to_string(),
    })
}

/// One value set by an administrator at one level for one scope (an account, site, group or
/// user id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub level: Level,
    pub scope_id: String,
    pub setting: Setting,
    pub value: Value,
    /// Lower levels cannot override a locked value.
    pub locked: bool,
}

impl PolicyEntry {
    /// The entry with a trimmed, non-empty scope id and a value checked against its setting.
    pub fn validated(self) -> Result<PolicyEntry, PolicyError> {
        Ok(PolicyEntry {
            scope_id: check_id("scope id", &self.scope_id)?,
            value: self.value.validated(self.setting)?,
            ..self
        })
    }
}

/// Where a user sits in the hierarchy: the ids whose entries apply to them. A user outside
/// the directory has only their own id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub account: Option<String>,
    pub site: Option<String>,
    pub group: Option<String>,
    pub user: String,
}

impl Scope {
    /// A user with no account, site or group: only user-level entries apply.
    pub fn user_only(user_id: impl Into<String>) -> Scope {
        Scope {
            user: user_id.into(),
            ..Scope::default()
        }
    }

    /// The scope id at `level`, if the user has one there.
    pub fn id_at(&self, level: Level) -> Option<&str> {
        match level {
            Level::Account => self.account.as_deref(),
            Level::Site => self.site.as_deref(),
            Level::Group => self.group.as_deref(),
            Level::User => Some(self.user.as_str()),
        }
    }

    /// Whether an entry set at (`level`, `scope_id`) applies to this user.
    pub fn covers(&self, level: Level, scope_id: &str) -> bool {
        self.id_at(level) == Some(scope_id)
    }
}

/// A user in the directory: where they sit and the language they want things in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserProfile {
    pub user_id: String,
    pub account_id: Option<String>,
    pub site_id: Option<String>,
    pub group_id: Option<String>,
    /// Target of translation when a policy turns it on without naming a language.
    pub preferred_language: Option<String>,
}

impl UserProfile {
    pub fn scope(&self) -> Scope {
        Scope {
            account: self.account_id.clone(),
            site: self.site_id.clone(),
            group: self.group_id.clone(),
            user: self.user_id.clone(),
        }
    }

    /// The profile with a non-empty user id, empty optional ids dropped and the preferred
    /// language validated.
    pub fn validated(self) -> Result<UserProfile, PolicyError> {
        let optional =
            |id: Option<String>| id.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(UserProfile {
            user_id: check_id("user id", &self.user_id)?,
            account_id: optional(self.account_id),
            site_id: optional(self.site_id),
            group_id: optional(self.group_id),
            preferred_language: optional(self.preferred_language)
                .as_deref()
                .map(language_code)
                .transpose()?,
        })
    }
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub level: Level,
    pub scope_id: String,
    pub locked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranslationPolicy {
    pub enabled: bool,
    /// Explicit target language; `None` means the user's preferred language.
    pub target: Option<String>,
}

/// What one user gets after resolution. [`Default`] is the policy when nothing is set: every
/// AI feature on, translation off, any spoken language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectivePolicy {
    pub translation: TranslationPolicy,
    pub call_summary: bool,
    pub voicemail_tasks: bool,
    pub voicemail_prioritization: bool,
    pub team_sms_thread_summary: bool,
    /// Empty means any language.
    pub language_allowlist: Vec<String>,
    /// The entry each setting came from; a setting absent here has its default.
    pub sources: BTreeMap<Setting, Source>,
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        EffectivePolicy {
            translation: TranslationPolicy {
                enabled: false,
                target: None,
            },
            call_summary: true,
            voicemail_tasks: true,
            voicemail_prioritization: true,
            team_sms_thread_summary: true,
            language_allowlist: Vec::new(),
            sources: BTreeMap::new(),
        }
    }
}

impl EffectivePolicy {
    /// The language to translate into, if translation is on: the explicit target, else the
    /// user's preferred language, else none (nothing to translate into).
    pub fn translation_target(&self, preferred_language: Option<&str>) -> Option<String> {
        if !self.translation.enabled {
            return None;
        }
        self.translation.target.clone().or_else(|| {
            preferred_language
                .map(|l| l.trim().to_ascii_lowercase())
                .filter(|l| !l.is_empty())
        })
    }

    /// Whether detection may choose `code` (always, with an empty allowlist).
    pub fn language_allowed(&self, code: &str) -> bool {
        self.language_allowlist.is_empty()
            || self
                .language_allowlist
                .iter()
                .any(|c| c.eq_ignore_ascii_case(code.trim()))
    }

    /// The effective value of one setting, in the same form as it is set.
    pub fn value(&self, setting: Setting) -> Value {
        match setting {
            Setting::Translation => Value::Translation {
                enabled: self.translation.enabled,
                target: self.translation.target.clone(),
            },
            Setting::CallSummary => Value::Enabled(self.call_summary),
            Setting::VoicemailTasks => Value::Enabled(self.voicemail_tasks),
            Setting::VoicemailPrioritization => Value::Enabled(self.voicemail_prioritization),
            Setting::TeamSmsThreadSummary => Value::Enabled(self.team_sms_thread_summary),
            Setting::LanguageAllowlist => Value::Languages(self.language_allowlist.clone()),
        }
    }

    /// Where a setting's value came from; `None` means the default.
    pub fn source(&self, setting: Setting) -> Option<&Source> {
        self.sources.get(&setting)
    }

    /// Applies a value already checked to fit `setting`.
    fn apply(&mut self, setting: Setting, value: &Value) {
        match (setting, value) {
            (Setting::Translation, Value::Translation { enabled, target }) => {
                self.translation = TranslationPolicy {
                    enabled: *enabled,
                    target: target.clone(),
                }
            }
            (Setting::LanguageAllowlist, Value::Languages(codes)) => {
                self.language_allowlist = codes.clone()
            }
            (Setting::CallSummary, Value::Enabled(on)) => self.call_summary = *on,
            (Setting::VoicemailTasks, Value::Enabled(on)) => self.voicemail_tasks = *on,
            (Setting::VoicemailPrioritization, Value::Enabled(on)) => {
                self.voicemail_prioritization = *on
            }
            (Setting::TeamSmsThreadSummary, Value::Enabled(on)) => {
                self.team_sms_thread_summary = *on
            }
            _ => {}
        }
    }
}

/// Resolves what `scope`'s user gets from `entries`, in any order.
///
/// Only entries whose (level, scope id) belong to the user count. Per setting: the highest
/// locked entry wins, because a lock is an administrator saying "not below me"; without a lock
/// the most specific entry wins; without entries the default stays. Entries whose value does
/// not fit their setting are skipped (the store refuses to write them), so one bad entry cannot
/// stop a user's whole policy from resolving. Among duplicates at the same level (not possible
/// in the store) the later entry wins.
pub fn resolve<'a>(
    scope: &Scope,
    entries: impl IntoIterator<Item = &'a PolicyEntry>,
) -> EffectivePolicy {
    let mut winners: BTreeMap<Setting, (&PolicyEntry, Value)> = BTreeMap::new();
    for entry in entries {
        if !scope.covers(entry.level, &entry.scope_id) {
            continue;
        }
        let Ok(value) = entry.value.clone().validated(entry.setting) else {
            continue;
        };
        let replace = match winners.get(&entry.setting) {
            None => true,
            Some((current, _)) => match (current.locked, entry.locked) {
                // Both locked: the higher (broader) lock wins.
                (true, true) => entry.level <= current.level,
                (true, false) => false,
                // A lock anywhere beats an unlocked value: higher locks overrule lower values,
                // and a lock below an unlocked value is still the most specific setting.
                (false, true) => true,
                (false, false) => entry.level >= current.level,
            },
        };
        if replace {
            winners.insert(entry.setting, (entry, value));
        }
    }
    let mut policy = EffectivePolicy::default();
    for (setting, (entry, value)) in winners {
        policy.apply(setting, &value);
        policy.sources.insert(
            setting,
            Source {
                level: entry.level,
                scope_id: entry.scope_id.clone(),
                locked: entry.locked,
            },
        );
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope {
            account: Some("acme".into()),
            site: Some("paris".into()),
            group: Some("sales".into()),
            user: "alice".into(),
        }
    }

    fn id(level: Level) -> String {
        scope().id_at(level).unwrap().to_string()
    }

    fn entry(level: Level, setting: Setting, value: Value, locked: bool) -> PolicyEntry {
        PolicyEntry {
            level,
            scope_id: id(level),
            setting,
            value,
            locked,
        }
    }

    #[test]
    fn names_round_trip() {
        for level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>().unwrap(), level);
            assert_eq!(
                serde_json::to_string(&level).unwrap(),
                format!("\"{level}\"")
            );
        }
        for setting in Setting::ALL {
            assert_eq!(setting.as_str().parse::<Setting>().unwrap(), setting);
            assert_eq!(
                serde_json::to_string(&setting).unwrap(),
                format!("\"{setting}\"")
            );
        }
        assert_eq!("Call-Summary".parse::<Setting>(), Ok(Setting::CallSummary));
        assert!(Level::Account < Level::Site && Level::Group < Level::User);
    }

    #[test]
    fn bad_names_list_the_allowed_ones() {
        let err = "tenant".parse::<Level>().unwrap_err().to_string();
        assert!(err.contains("account, site, group, user"), "{err}");
        let err = "summary".parse::<Setting>().unwrap_err().to_string();
        assert!(err.contains("call_summary") && err.contains("language_allowlist"));
    }

    #[test]
    fn values_parse_from_their_cli_forms() {
        use Setting::*;
        assert_eq!(Value::parse(CallSummary, "on"), Ok(Value::Enabled(true)));
        assert_eq!(
            Value::parse(VoicemailTasks, " OFF "),
            Ok(Value::Enabled(false))
        );
        assert_eq!(
            Value::parse(TeamSmsThreadSummary, "true"),
            Ok(Value::Enabled(true))
        );
        assert_eq!(
            Value::parse(Translation, "off"),
            Ok(Value::Translation {
                enabled: false,
                target: None
            })
        );
        assert_eq!(
            Value::parse(Translation, "on"),
            Ok(Value::Translation {
                enabled: true,
                target: None
            })
        );
        assert_eq!(
            Value::parse(Translation, "ES"),
            Ok(Value::Translation {
                enabled: true,
                target: Some("es".into())
            })
        );
        assert_eq!(
            Value::parse(LanguageAllowlist, "en, ES,de,en,"),
            Ok(Value::Languages(vec![
                "en".into(),
                "es".into(),
                "de".into()
            ]))
        );
        assert_eq!(
            Value::parse(LanguageAllowlist, "any"),
            Ok(Value::Languages(vec![]))
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_allowed_forms() {
        use Setting::*;
        let err = Value::parse(CallSummary, "maybe").unwrap_err().to_string();
        assert!(err.contains("on, off, true or false"), "{err}");
        let err = Value::parse(Translation, "spanish")
            .unwrap_err()
            .to_string();
        assert!(err.contains("language code like es"), "{err}");
        assert!(matches!(
            Value::parse(LanguageAllowlist, "en,e1"),
            Err(PolicyError::InvalidLanguage(_))
        ));
        assert!(Value::parse(LanguageAllowlist, " , ").is_err());
        assert!(Value::parse(LanguageAllowlist, "").is_err());
    }

    #[test]
    fn display_is_the_cli_form() {
        for (setting, text) in [
            (Setting::CallSummary, "on"),
            (Setting::CallSummary, "off"),
            (Setting::Translation, "off"),
            (Setting::Translation, "on"),
            (Setting::Translation, "es"),
            (Setting::LanguageAllowlist, "any"),
            (Setting::LanguageAllowlist, "en,es"),
        ] {
            let value = Value::parse(setting, text).unwrap();
            assert_eq!(value.to_string(), text);
            assert_eq!(Value::parse(setting, &value.to_string()), Ok(value));
        }
    }

    #[test]
    fn values_are_stored_as_plain_json() {
        let cases = [
            (Value::Enabled(true), "true"),
            (
                Value::Translation {
                    enabled: true,
                    target: Some("es".into()),
                },
                r#"{"enabled":true,"target":"es"}"#,
            ),
            (Value::Languages(vec!["en".into()]), r#"["en"]"#),
        ];
        for (value, json) in cases {
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
            assert_eq!(serde_json::from_str::<Value>(json).unwrap(), value);
        }
    }

    #[test]
    fn validation_checks_shape_and_codes() {
        assert!(matches!(
            Value::Enabled(true).validated(Setting::Translation),
            Err(PolicyError::Mismatch { .. })
        ));
        assert!(
            Value::Languages(vec![])
                .validated(Setting::CallSummary)
                .is_err()
        );
        assert_eq!(
            Value::Languages(vec!["EN".into(), "en".into()]).validated(Setting::LanguageAllowlist),
            Ok(Value::Languages(vec!["en".into()]))
        );
        assert!(
            Value::Translation {
                enabled: true,
                target: Some("english".into())
            }
            .validated(Setting::Translation)
            .is_err()
        );
        let blank = PolicyEntry {
            level: Level::Site,
            scope_id: " ".into(),
            setting: Setting::CallSummary,
            value: Value::Enabled(true),
            locked: false,
        };
        assert_eq!(blank.validated(), Err(PolicyError::Empty("scope id")));
    }

    #[test]
    fn nothing_set_gives_the_defaults() {
        let policy = resolve(&scope(), &[]);
        assert_eq!(policy, EffectivePolicy::default());
        assert!(policy.call_summary && policy.voicemail_tasks);
        assert!(policy.voicemail_prioritization && policy.team_sms_thread_summary);
        assert!(!policy.translation.enabled);
        assert!(policy.language_allowlist.is_empty());
        assert!(Setting::ALL.iter().all(|s| policy.source(*s).is_none()));
    }

    #[test]
    fn a_value_at_any_single_level_applies() {
        for level in Level::ALL {
            for locked in [false, true] {
                let entries = [entry(
                    level,
                    Setting::CallSummary,
                    Value::Enabled(false),
                    locked,
                )];
                let policy = resolve(&scope(), &entries);
                assert!(!policy.call_summary, "{level} locked={locked}");
                assert_eq!(
                    policy.source(Setting::CallSummary),
                    Some(&Source {
                        level,
                        scope_id: id(level),
                        locked
                    })
                );
            }
        }
    }

    /// For each pair of levels, a value at both, locked at neither, the upper, the lower or
    /// both: a lock at the upper level wins, otherwise the lower (more specific) level does.
    #[test]
    fn every_pair_of_levels_and_locks_resolves_by_the_rule() {
        for (i, &upper) in Level::ALL.iter().enumerate() {
            for &lower in &Level::ALL[i + 1..] {
                for (upper_locked, lower_locked) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let expected = if upper_locked { upper } else { lower };
                    let upper_entry = entry(
                        upper,
                        Setting::Translation,
                        Value::parse(Setting::Translation, "de").unwrap(),
                        upper_locked,
                    );
                    let lower_entry = entry(
                        lower,
                        Setting::Translation,
                        Value::parse(Setting::Translation, "fr").unwrap(),
                        lower_locked,
                    );
                    // The input order must not matter.
                    for entries in [
                        vec![upper_entry.clone(), lower_entry.clone()],
                        vec![lower_entry.clone(), upper_entry.clone()],
                    ] {
                        let policy = resolve(&scope(), &entries);
                        let source = policy.source(Setting::Translation).unwrap();
                        let case = format!(
                            "{upper}(locked={upper_locked}) vs {lower}(locked={lower_locked})"
                        );
                        assert_eq!(source.level, expected, "{case}");
                        let target = if expected == upper { "de" } else { "fr" };
                        assert_eq!(policy.translation.target.as_deref(), Some(target), "{case}");
                        assert!(policy.translation.enabled, "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_highest_lock_wins_over_lower_locks_and_more_specific_values() {
        let entries = [
            entry(
                Level::Account,
                Setting::VoicemailTasks,
                Value::Enabled(true),
                false,
            ),
            entry(
                Level::Site,
                Setting::VoicemailTasks,
                Value::Enabled(false),
                true,
            ),
            entry(
                Level::Group,
                Setting::VoicemailTasks,
                Value::Enabled(true),
                true,
            ),
            entry(
                Level::User,
                Setting::VoicemailTasks,
                Value::Enabled(true),
                false,
            ),
        ];
        let policy = resolve(&scope(), &entries);
        assert!(!policy.voicemail_tasks);
        assert_eq!(
            policy.source(Setting::VoicemailTasks).unwrap().level,
            Level::Site
        );
    }

    #[test]
    fn settings_resolve_independently() {
        let entries = [
            entry(
                Level::Account,
                Setting::CallSummary,
                Value::Enabled(false),
                true,
            ),
            entry(
                Level::Account,
                Setting::LanguageAllowlist,
                Value::Languages(vec!["en".into(), "es".into()]),
                false,
            ),
            entry(
                Level::User,
                Setting::CallSummary,
                Value::Enabled(true),
                false,
            ),
            entry(
                Level::Group,
                Setting::LanguageAllowlist,
                Value::Languages(vec!["de".into()]),
                false,
            ),
        ];
        let policy = resolve(&scope(), &entries);
        assert!(!policy.call_summary);
        assert_eq!(policy.language_allowlist, vec!["de".to_string()]);
        assert!(policy.language_allowed("DE") && !policy.language_allowed("en"));
        assert!(policy.voicemail_tasks);
        assert_eq!(policy.source(Setting::VoicemailTasks), None);
    }

    #[test]
    fn entries_for_other_scopes_are_ignored() {
        let mut other_group = entry(
            Level::Group,
            Setting::CallSummary,
            Value::Enabled(false),
            true,
        );
        other_group.scope_id = "support".into();
        let mut other_user = entry(
            Level::User,
            Setting::VoicemailTasks,
            Value::Enabled(false),
            false,
        );
        other_user.scope_id = "bob".into();
        // Ids are per level: a site named like the user's group does not apply.
        let mut wrong_level = entry(
            Level::Site,
            Setting::TeamSmsThreadSummary,
            Value::Enabled(false),
            true,
        );
        wrong_level.scope_id = "sales".into();
        let policy = resolve(&scope(), &[other_group, other_user, wrong_level]);
        assert_eq!(policy, EffectivePolicy::default());
    }

    #[test]
    fn a_user_outside_the_directory_gets_only_user_entries() {
        let lone = Scope::user_only("alice");
        let entries = [
            entry(
                Level::Account,
                Setting::CallSummary,
                Value::Enabled(false),
                true,
            ),
            entry(
                Level::User,
                Setting::VoicemailTasks,
                Value::Enabled(false),
                false,
            ),
        ];
        let policy = resolve(&lone, &entries);
        assert!(policy.call_summary);
        assert!(!policy.voicemail_tasks);
    }

    #[test]
    fn entries_whose_value_does_not_fit_are_skipped() {
        let entries = [
            entry(
                Level::Account,
                Setting::CallSummary,
                Value::Enabled(false),
                false,
            ),
            entry(
                Level::User,
                Setting::CallSummary,
                Value::Languages(vec![]),
                true,
            ),
        ];
        let policy = resolve(&scope(), &entries);
        assert!(!policy.call_summary);
        assert_eq!(
            policy.source(Setting::CallSummary).unwrap().level,
            Level::Account
        );
    }

    #[test]
    fn translation_target_prefers_the_explicit_target() {
        let mut policy = EffectivePolicy::default();
        assert_eq!(policy.translation_target(Some("es")), None);
        policy.translation.enabled = true;
        assert_eq!(policy.translation_target(Some("ES")), Some("es".into()));
        assert_eq!(policy.translation_target(None), None);
        policy.translation.target = Some("de".into());
        assert_eq!(policy.translation_target(Some("es")), Some("de".into()));
    }

    #[test]
    fn profiles_are_normalized() {
        let profile = UserProfile {
            user_id: " alice ".into(),
            account_id: Some("acme".into()),
            site_id: Some(" ".into()),
            group_id: None,
            preferred_language: Some("ES".into()),
        }
        .validated()
        .unwrap();
        assert_eq!(profile.user_id, "alice");
        assert_eq!(profile.site_id, None);
        assert_eq!(profile.preferred_language.as_deref(), Some("es"));
        assert_eq!(profile.scope().id_at(Level::Account), Some("acme"));
        let bad = UserProfile {
            user_id: "a".into(),
            preferred_language: Some("xx1".into()),
            ..UserProfile::default()
        };
        assert!(bad.validated().is_err());
    }

    #[test]
    fn intents_are_trimmed_and_checked() {
        let ok = check_intent(&Intent {
            name: " billing ".into(),
            description: " invoices and payments ".into(),
        })
        .unwrap();
        assert_eq!(
            (ok.name.as_str(), ok.description.as_str()),
            ("billing", "invoices and payments")
        );
        for (name, description) in [("", "x"), ("x", " "), ("a\tb", "x")] {
            assert!(
                check_intent(&Intent {
                    name: name.into(),
                    description: description.into()
                })
                .is_err()
            );
        }
    }
}
