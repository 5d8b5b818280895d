//! Languages by name, and the language of written text (SMS, edited summaries, text sent for
//! translation). Spoken language comes from Whisper; written text goes through whatlang, whose
//! trigram models need no download.

/// ISO 639-1 codes with their English names, as prompts name them. Whisper's languages that
/// users are likely to meet on a PBX; prompts fall back to the code itself for others.
const LANGUAGES: &[(&str, &str, &str)] = &[
    // (ISO 639-1, ISO 639-3 as whatlang names it, English name)
    ("af", "afr", "Afrikaans"),
    ("ar", "ara", "Arabic"),
    ("bg", "bul", "Bulgarian"),
    ("bn", "ben", "Bengali"),
    ("ca", "cat", "Catalan"),
    ("cs", "ces", "Czech"),
    ("da", "dan", "Danish"),
    ("de", "deu", "German"),
    ("el", "ell", "Greek"),
    ("en", "eng", "English"),
    ("es", "spa", "Spanish"),
    ("et", "est", "Estonian"),
    ("fa", "pes", "Persian"),
    ("fi", "fin", "Finnish"),
    ("fr", "fra", "French"),
    ("he", "heb", "Hebrew"),
    ("hi", "hin", "Hindi"),
    ("hr", "hrv", "Croatian"),
    ("hu", "hun", "Hungarian"),
    ("id", "ind", "Indonesian"),
    ("it", "ita", "Italian"),
    ("ja", "jpn", "Japanese"),
    ("ko", "kor", "Korean"),
    ("lt", "lit", "Lithuanian"),
    ("lv", "lav", "Latvian"),
    ("nl", "nld", "Dutch"),
    ("no", "nob", "Norwegian"),
    ("pl", "pol", "Polish"),
    ("pt", "por", "Portuguese"),
    ("ro", "ron", "Romanian"),
    ("ru", "rus", "Russian"),
    ("sk", "slk", "Slovak"),
    ("sl", "slv", "Slovenian"),
    ("sr", "srp", "Serbian"),
    ("sv", "swe", "Swedish"),
    ("ta", "tam", "Tamil"),
    ("th", "tha", "Thai"),
    ("tl", "tgl", "Tagalog"),
    ("tr", "tur", "Turkish"),
    ("uk", "ukr", "Ukrainian"),
    ("ur", "urd", "Urdu"),
    ("vi", "vie", "Vietnamese"),
    ("zh", "cmn", "Chinese"),
];

/// The English name of a language code (`es` → `Spanish`), for prompts.
pub fn language_name(code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_lowercase();
    LANGUAGES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, _, name)| *name)
}

/// The language a written text is in, as an ISO 639-1 code with whatlang's confidence.
/// `None` when the text is too short or too ambiguous to tell.
pub fn detect_text_language(text: &str) -> Option<companion_core::Language> {
    let info = whatlang::detect(text)?;
    let code3 = info.lang().code();
    let code = LANGUAGES
        .iter()
        .find(|(_, c3, _)| *c3 == code3)
        .map(|(c, _, _)| *c)?;
    Some(companion_core::Language {
        code: code.to_string(),
        probability: info.confidence() as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_codes() {
        assert_eq!(language_name("es"), Some("Spanish"));
        assert_eq!(language_name(" DE "), Some("German"));
        assert_eq!(language_name("xx"), None);
    }

    #[test]
    fn written_languages_are_told_apart() {
        let cases = [
            (
                "en",
                "Hi, this is Maria from the dental office, please call me back tomorrow.",
            ),
            (
                "es",
                "Hola, soy María de la clínica dental, por favor llámeme mañana por la tarde.",
            ),
            (
                "de",
                "Hallo, hier ist Maria von der Zahnarztpraxis, bitte rufen Sie mich morgen zurück.",
            ),
            (
                "fr",
                "Bonjour, c'est Maria du cabinet dentaire, merci de me rappeler demain matin.",
            ),
        ];
        for (code, text) in cases {
            assert_eq!(detect_text_language(text).unwrap().code, code, "{text}");
        }
        assert_eq!(detect_text_language(""), None);
    }
}
