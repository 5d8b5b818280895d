//! Accuracy measures for evaluation: word error rate on normalised text.

/// Lower-cases, turns punctuation into spaces and splits into words. Apostrophes inside words
/// are kept ("don't").
pub fn normalize_words(text: &str) -> Vec<String> {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split_whitespace()
        .map(|w| w.trim_matches('\'').to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Like [`normalize_words`], but numbers compare as numbers: spoken numbers become digits
/// ([`crate::facts::normalize_numbers`]) and every run of digits joined by spaces or phone
/// punctuation is one token, so "one two three", "1, 2, 3" and "123" all give `["123"]`,
/// and "five five five zero one four two" matches "555-0142".
pub fn normalize_words_with_numbers(text: &str) -> Vec<String> {
    let spoken = crate::facts::normalize_numbers(text);
    normalize_words(&crate::facts::join_digit_runs(&spoken))
}

/// Edit distance between two token sequences (substitutions, insertions, deletions).
pub fn edit_distance<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut cur = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = prev[j] + usize::from(r != h);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hypothesis.len()]
}

/// Errors and reference length for one pair, so rates can be pooled over a set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorCount {
    pub errors: usize,
    pub reference_len: usize,
}

impl ErrorCount {
    pub fn rate(self) -> f64 {
        if self.reference_len == 0 {
            if self.errors == 0 { 0.0 } else { 1.0 }
        } else {
            self.errors as f64 / self.reference_len as f64
        }
    }
}

impl std::ops::Add for ErrorCount {
    type Output = ErrorCount;

    fn add(self, other: ErrorCount) -> ErrorCount {
        ErrorCount {
            errors: self.errors + other.errors,
            reference_len: self.reference_len + other.reference_len,
        }
    }
}

/// Word errors of a hypothesis against a reference, after normalisation.
pub fn word_errors(reference: &str, hypothesis: &str) -> ErrorCount {
    let r = normalize_words(reference);
    let h = normalize_words(hypothesis);
    ErrorCount {
        errors: edit_distance(&r, &h),
        reference_len: r.len(),
    }
}

/// Word errors like [`word_errors`], with numbers compared as numbers
/// ([`normalize_words_with_numbers`]): a number written as digits on one side and as
/// words on the other is no error.
pub fn word_errors_with_numbers(reference: &str, hypothesis: &str) -> ErrorCount {
    let r = normalize_words_with_numbers(reference);
    let h = normalize_words_with_numbers(hypothesis);
    ErrorCount {
        errors: edit_distance(&r, &h),
        reference_len: r.len(),
    }
}

/// Character errors (for scripts written without spaces: Chinese, Japanese).
pub fn char_errors(reference: &str, hypothesis: &str) -> ErrorCount {
    let chars = |s: &str| -> Vec<char> { normalize_words(s).concat().chars().collect() };
    let (r, h) = (chars(reference), chars(hypothesis));
    ErrorCount {
        errors: edit_distance(&r, &h),
        reference_len: r.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_and_punctuation() {
        assert_eq!(
            normalize_words("Hello, World! Don't."),
            ["hello", "world", "don't"]
        );
    }

    #[test]
    fn word_error_rate_counts_each_edit() {
        assert_eq!(word_errors("a b c d", "a b c d").rate(), 0.0);
        assert_eq!(word_errors("a b c d", "a x c").errors, 2);
        assert_eq!(word_errors("a b", "a b c d").rate(), 1.0);
        assert_eq!(word_errors("", "").rate(), 0.0);
        assert_eq!(word_errors("", "noise").rate(), 1.0);
    }

    #[test]
    fn numbers_compare_as_numbers() {
        let one_two_three = normalize_words_with_numbers("one two three");
        assert_eq!(one_two_three, ["123"]);
        assert_eq!(normalize_words_with_numbers("1, 2, 3"), one_two_three);
        assert_eq!(normalize_words_with_numbers("123"), one_two_three);
        assert_eq!(
            normalize_words_with_numbers("Twenty-three dollars at 3:30 p.m."),
            ["23", "dollars", "at", "330", "p", "m"]
        );
        assert_eq!(
            word_errors_with_numbers(
                "call me at five five five zero one four two",
                "Call me at 555-0142."
            )
            .errors,
            0
        );
        assert_eq!(
            word_errors_with_numbers("dreiundzwanzig Euro", "23 Euro").errors,
            0
        );
        assert_eq!(
            word_errors_with_numbers("call 555-0142", "call 555-0143").errors,
            1
        );
        // The plain measure still counts the spelling difference.
        assert_eq!(word_errors("one two three", "123").errors, 3);
    }

    #[test]
    fn char_errors_for_unspaced_scripts() {
        let c = char_errors("砸自己的脚", "砸自己脚");
        assert_eq!((c.errors, c.reference_len), (1, 5));
    }
}
