//! Words from Whisper's sub-word tokens: a token that starts with a space starts a new word.

use companion_core::Word;

/// One decoded text token with its timing (seconds) and probability.
#[derive(Debug, Clone)]
pub struct Token {
    pub text: String,
    pub start_s: f64,
    pub end_s: f64,
    pub probability: f32,
}

/// Groups tokens into words: start of the first token, end of the last, mean probability.
pub fn words_from_tokens(tokens: &[Token]) -> Vec<Word> {
    let mut words: Vec<(Word, usize)> = Vec::new();
    for token in tokens {
        if token.text.is_empty() {
            continue;
        }
        let starts_word = token.text.starts_with(' ') || words.is_empty();
        match words.last_mut() {
            Some((word, n)) if !starts_word => {
                word.text.push_str(&token.text);
                word.end_s = token.end_s;
                word.probability += token.probability;
                *n += 1;
            }
            _ => words.push((
                Word {
                    text: token.text.clone(),
                    start_s: token.start_s,
                    end_s: token.end_s,
                    probability: token.probability,
                },
                1,
            )),
        }
    }
    words
        .into_iter()
        .map(|(mut word, n)| {
            word.text = word.text.trim().to_string();
            word.probability /= n as f32;
            word
        })
        .filter(|w| !w.text.is_empty())
        .collect()
}

/// Whisper can fall into a loop and repeat a word or phrase dozens of times, even after its
/// temperature fallback. Any run of 1 to 8 words repeated more than [`MAX_REPEATS`] times in a
/// row is cut back to one occurrence: a loop is invented text, not speech.
pub const MAX_REPEATS: usize = 3;

fn key(word: &Word) -> String {
    word.text
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Removes decoding loops from a word sequence; returns whether anything was removed.
pub fn collapse_loops(words: &mut Vec<Word>) -> bool {
    let keys: Vec<String> = words.iter().map(key).collect();
    let mut keep = vec![true; words.len()];
    let mut i = 0;
    while i < words.len() {
        let mut advanced = false;
        for n in 1..=8usize {
            if i + n > words.len() || keys[i..i + n].iter().all(String::is_empty) {
                continue;
            }
            let mut repeats = 1;
            while i + (repeats + 1) * n <= words.len()
                && keys[i + repeats * n..i + (repeats + 1) * n] == keys[i..i + n]
            {
                repeats += 1;
            }
            if repeats > MAX_REPEATS {
                for flag in &mut keep[i + n..i + repeats * n] {
                    *flag = false;
                }
                i += repeats * n;
                advanced = true;
                break;
            }
        }
        if !advanced {
            i += 1;
        }
    }
    let removed = keep.iter().any(|k| !k);
    if removed {
        let mut flags = keep.into_iter();
        words.retain(|_| flags.next().unwrap_or(true));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, start: f64, end: f64, p: f32) -> Token {
        Token {
            text: text.into(),
            start_s: start,
            end_s: end,
            probability: p,
        }
    }

    #[test]
    fn joins_subword_tokens_into_words() {
        let words = words_from_tokens(&[
            tok(" Call", 0.0, 0.3, 0.9),
            tok(" me", 0.3, 0.5, 0.8),
            tok(" back", 0.5, 0.7, 1.0),
            tok("ward", 0.7, 0.9, 0.6),
            tok(".", 0.9, 0.9, 1.0),
        ]);
        let texts: Vec<_> = words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, ["Call", "me", "backward."]);
        assert_eq!(words[2].start_s, 0.5);
        assert_eq!(words[2].end_s, 0.9);
        assert!((words[2].probability - (1.0 + 0.6 + 1.0) / 3.0).abs() < 1e-6);
    }

    fn words(text: &str) -> Vec<Word> {
        text.split(' ')
            .enumerate()
            .map(|(i, w)| Word {
                text: w.into(),
                start_s: i as f64,
                end_s: i as f64 + 0.5,
                probability: 0.9,
            })
            .collect()
    }

    fn texts(words: &[Word]) -> String {
        words
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn loops_are_cut_back_to_one_occurrence() {
        let mut w = words("Guten Tag. Hier, hier, hier, hier, hier, hier ist Thomas.");
        assert!(collapse_loops(&mut w));
        assert_eq!(texts(&w), "Guten Tag. Hier, ist Thomas.");

        let mut w = words("thank you thank you thank you thank you thank you bye");
        assert!(collapse_loops(&mut w));
        assert_eq!(texts(&w), "thank you bye");
    }

    #[test]
    fn ordinary_repetition_is_speech() {
        let mut w = words("no no no I said call me back back tomorrow");
        assert!(!collapse_loops(&mut w));
        assert_eq!(w.len(), 10);
    }

    #[test]
    fn no_tokens_no_words() {
        assert!(words_from_tokens(&[]).is_empty());
        assert!(words_from_tokens(&[tok(" ", 0.0, 0.1, 0.5)]).is_empty());
    }
}
