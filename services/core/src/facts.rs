//! Checks that the facts in model output come from the transcript.
//!
//! A local language model writes voicemail tasks and call summaries from a transcript. A
//! wrong callback number, name, amount or day is worse than none: the user acts on it. So
//! [`FactCheck`] lists every number, time, day and name in the model's text that the
//! transcript does not contain, and callers drop or mark that output.
//!
//! The comparison is lexical on purpose: cheap, explainable and model-free. It reads the
//! transcript generously (more ways to find a fact there) and the model's text strictly.
//!
//! Whisper writes numbers as digits ("555-0142", "$250", "3 p.m.") or as words ("five five
//! five zero one four two", "cinco cinco cinco", "dreiundzwanzig", "quatre-vingt-dix") in
//! whichever language was spoken, so both sides go through [`normalize_numbers`] and are
//! compared as runs of digits ([`digit_runs`]).
//!
//! # Known limitations
//!
//! - Number words of English, Spanish, German, French, Italian and Portuguese apply to every
//!   text, whatever its language. Words that are numbers in one language and ordinary words
//!   in another count only where nothing else makes sense: Italian "due" (English "due"),
//!   "sei", "otto" (the name Otto), Spanish "once" (English "once"), Portuguese "meia" and
//!   the articles "un", "una", "uno", "une", "um", "uma" are numbers inside a spoken number
//!   ("treinta y un", "un millón"), inside a sequence of spoken digits ("tre due uno",
//!   "zéro un") or after a time word ("a las once", "alle sei"); "a", "an", "ein", "eine",
//!   "einen" only before a multiplier ("a hundred", "eine Million"); "oh" only right after
//!   another number. Collisions kept as numbers: Spanish "dos" (Portuguese "of the"),
//!   Spanish "doce" (Portuguese "sweet"), French "neuf" ("new"), "seize", "null", German
//!   "elf"/"acht", and English "one" (except after "no", "the", "some", "every", ...).
//!   Both sides are normalized alike, so such a collision rarely changes a verdict.
//! - "six cents" stays "6 cents" (English money, or French 600); "cent" alone is 100 only
//!   before another number or "euros"/"francs". "Sept" (capitalized) is September.
//! - Ordinals ("the fifth", "am dritten Mai", "le premier") are read in transcripts only,
//!   where an extra number can only make a fact easier to find; in model output "first"
//!   and "second" are far more often words than dates.
//! - Digit runs join across spaces and phone punctuation, and a model's number passes when
//!   it occurs anywhere in the transcript's digits (even across two numbers), so one- and
//!   two-digit numbers are rarely flagged. A country code the caller never said ("+1")
//!   makes a phone number unsupported.
//! - Times are recognised from clock notation ("3:30", "15h", "3 pm", "15 Uhr",
//!   "o'clock") or a time word before the number ("at", "um", "a las", "à", "alle", ...);
//!   a bare "3" is only a number.
//! - Days are compared as concepts across languages ("viernes" supports "Friday");
//!   "mañana" and "morgen" mean both tomorrow and morning, so "Guten Morgen" supports
//!   "tomorrow". "May", "March" and "mai" count as months only when capitalized mid-sentence
//!   or next to a number.
//! - Names are capitalized words. German capitalizes every noun, so in German text only
//!   words after a title ("Herr", "Frau", "Dr."), after "von"/"an" or right after another
//!   capitalized word count as names. Text in Title Case ("Call Back Request") yields false
//!   names.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::metrics::edit_distance;
use crate::{CallSummary, Task};

// ------------------------------------------------------------------------------------------
// Number words
// ------------------------------------------------------------------------------------------

/// The grammatical role of a number word: it decides what may follow it in one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 0–9.
    Unit,
    /// 10–19.
    Teen,
    /// 20, 30, … 90.
    Tens,
    /// A whole hundreds word: "doscientos" (200), "cien", "cem" (100).
    Hundreds,
    /// Multiplies what precedes it by 100 ("hundred", "hundert", "cent", "cento", "ciento").
    Hundred,
    /// Multiplies by 1000.
    Thousand,
    /// Multiplies by a million.
    Million,
    /// "and", "y", "und", "et", "e": joins the parts of one number.
    And,
    /// "double", "triple": repeats the next digit.
    Repeat,
    /// Written digits followed by a multiplier ("5 thousand"); never in the tables.
    Digits,
}

/// Whether a word is a number wherever it appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Strong,
    /// Also a common word in some language: a number only among other numbers.
    Weak,
    /// An article: 1 only before a multiplier ("a hundred", "ein hundert", "eine Million").
    Article,
    /// "oh": 0 only right after another number.
    AfterDigit,
    /// A piece of compound words only ("veinti-trés", Italian "vent-otto").
    CompoundOnly,
    /// An ordinal; read in transcripts only.
    Ordinal,
}

#[derive(Debug)]
struct NumberWord {
    /// Lower case, with its accents.
    word: &'static str,
    value: u64,
    kind: Kind,
    usage: Use,
}

impl NumberWord {
    /// Whether the word may be a piece of a compound ("dreiundzwanzig", "trentacinque").
    fn in_compounds(&self) -> bool {
        match self.kind {
            Kind::And => self.word == "und",
            Kind::Repeat | Kind::Digits => false,
            _ => {
                !matches!(self.usage, Use::AfterDigit | Use::Ordinal)
                    && !matches!(self.word, "a" | "an")
            }
        }
    }
}

const fn num(word: &'static str, value: u64, kind: Kind) -> NumberWord {
    NumberWord {
        word,
        value,
        kind,
        usage: Use::Strong,
    }
}

const fn num_as(word: &'static str, value: u64, kind: Kind, usage: Use) -> NumberWord {
    NumberWord {
        word,
        value,
        kind,
        usage,
    }
}

use Kind::{And, Hundred, Hundreds, Million, Repeat, Teen, Tens, Thousand, Unit};
use Use::{AfterDigit, Article, CompoundOnly, Ordinal, Weak};

/// Each word appears once, in the first language that has it (English "six" is also
/// French; Spanish "cinco" also Portuguese; French "mille" also Italian, ...).
const ENGLISH: &[NumberWord] = &[
    num("zero", 0, Unit),
    num("nought", 0, Unit),
    num_as("oh", 0, Unit, AfterDigit),
    num("one", 1, Unit),
    num("two", 2, Unit),
    num("three", 3, Unit),
    num("four", 4, Unit),
    num("five", 5, Unit),
    num("six", 6, Unit),
    num("seven", 7, Unit),
    num("eight", 8, Unit),
    num("nine", 9, Unit),
    num("ten", 10, Teen),
    num("eleven", 11, Teen),
    num("twelve", 12, Teen),
    num("thirteen", 13, Teen),
    num("fourteen", 14, Teen),
    num("fifteen", 15, Teen),
    num("sixteen", 16, Teen),
    num("seventeen", 17, Teen),
    num("eighteen", 18, Teen),
    num("nineteen", 19, Teen),
    num("twenty", 20, Tens),
    num("thirty", 30, Tens),
    num("forty", 40, Tens),
    num("fifty", 50, Tens),
    num("sixty", 60, Tens),
    num("seventy", 70, Tens),
    num("eighty", 80, Tens),
    num("ninety", 90, Tens),
    num("hundred", 100, Hundred),
    num("thousand", 1000, Thousand),
    num("million", 1_000_000, Million),
    num_as("a", 1, Unit, Article),
    num_as("an", 1, Unit, Article),
    num("and", 0, And),
    num("double", 2, Repeat),
    num("triple", 3, Repeat),
    num_as("first", 1, Unit, Ordinal),
    num_as("second", 2, Unit, Ordinal),
    num_as("third", 3, Unit, Ordinal),
    num_as("fourth", 4, Unit, Ordinal),
    num_as("fifth", 5, Unit, Ordinal),
    num_as("sixth", 6, Unit, Ordinal),
    num_as("seventh", 7, Unit, Ordinal),
    num_as("eighth", 8, Unit, Ordinal),
    num_as("ninth", 9, Unit, Ordinal),
    num_as("tenth", 10, Teen, Ordinal),
    num_as("eleventh", 11, Teen, Ordinal),
    num_as("twelfth", 12, Teen, Ordinal),
    num_as("thirteenth", 13, Teen, Ordinal),
    num_as("fourteenth", 14, Teen, Ordinal),
    num_as("fifteenth", 15, Teen, Ordinal),
    num_as("sixteenth", 16, Teen, Ordinal),
    num_as("seventeenth", 17, Teen, Ordinal),
    num_as("eighteenth", 18, Teen, Ordinal),
    num_as("nineteenth", 19, Teen, Ordinal),
    num_as("twentieth", 20, Tens, Ordinal),
    num_as("thirtieth", 30, Tens, Ordinal),
];

const SPANISH: &[NumberWord] = &[
    num("cero", 0, Unit),
    num_as("uno", 1, Unit, Weak),
    num_as("un", 1, Unit, Weak),
    num_as("una", 1, Unit, Weak),
    num("dos", 2, Unit),
    num("tres", 3, Unit),
    num("cuatro", 4, Unit),
    num("cinco", 5, Unit),
    num("seis", 6, Unit),
    num("siete", 7, Unit),
    num("ocho", 8, Unit),
    num("nueve", 9, Unit),
    num("diez", 10, Teen),
    num_as("once", 11, Teen, Weak),
    num("doce", 12, Teen),
    num("trece", 13, Teen),
    num("catorce", 14, Teen),
    num("quince", 15, Teen),
    num("dieciséis", 16, Teen),
    num("diecisiete", 17, Teen),
    num("dieciocho", 18, Teen),
    num("diecinueve", 19, Teen),
    num("veinte", 20, Tens),
    num_as("veinti", 20, Tens, CompoundOnly),
    num("treinta", 30, Tens),
    num("cuarenta", 40, Tens),
    num("cincuenta", 50, Tens),
    num("sesenta", 60, Tens),
    num("setenta", 70, Tens),
    num("ochenta", 80, Tens),
    num("noventa", 90, Tens),
    num("cien", 100, Hundreds),
    num("ciento", 100, Hundred),
    num("doscientos", 200, Hundreds),
    num("doscientas", 200, Hundreds),
    num("trescientos", 300, Hundreds),
    num("trescientas", 300, Hundreds),
    num("cuatrocientos", 400, Hundreds),
    num("cuatrocientas", 400, Hundreds),
    num("quinientos", 500, Hundreds),
    num("quinientas", 500, Hundreds),
    num("seiscientos", 600, Hundreds),
    num("seiscientas", 600, Hundreds),
    num("setecientos", 700, Hundreds),
    num("setecientas", 700, Hundreds),
    num("ochocientos", 800, Hundreds),
    num("ochocientas", 800, Hundreds),
    num("novecientos", 900, Hundreds),
    num("novecientas", 900, Hundreds),
    num("mil", 1000, Thousand),
    num("millón", 1_000_000, Million),
    num("millones", 1_000_000, Million),
    num("y", 0, And),
    num("doble", 2, Repeat),
    num_as("primero", 1, Unit, Ordinal),
    num_as("primer", 1, Unit, Ordinal),
    num_as("primera", 1, Unit, Ordinal),
];

const GERMAN: &[NumberWord] = &[
    num("null", 0, Unit),
    num("eins", 1, Unit),
    num_as("ein", 1, Unit, Article),
    num_as("eine", 1, Unit, Article),
    num_as("einen", 1, Unit, Article),
    num("zwei", 2, Unit),
    num("zwo", 2, Unit),
    num("drei", 3, Unit),
    num("vier", 4, Unit),
    num("fünf", 5, Unit),
    num("sechs", 6, Unit),
    num("sieben", 7, Unit),
    num("acht", 8, Unit),
    num("neun", 9, Unit),
    num("zehn", 10, Teen),
    num("elf", 11, Teen),
    num("zwölf", 12, Teen),
    num("dreizehn", 13, Teen),
    num("vierzehn", 14, Teen),
    num("fünfzehn", 15, Teen),
    num("sechzehn", 16, Teen),
    num("siebzehn", 17, Teen),
    num("achtzehn", 18, Teen),
    num("neunzehn", 19, Teen),
    num("zwanzig", 20, Tens),
    num("dreißig", 30, Tens),
    num("vierzig", 40, Tens),
    num("fünfzig", 50, Tens),
    num("sechzig", 60, Tens),
    num("siebzig", 70, Tens),
    num("achtzig", 80, Tens),
    num("neunzig", 90, Tens),
    num("hundert", 100, Hundred),
    num("tausend", 1000, Thousand),
    num("millionen", 1_000_000, Million),
    num("und", 0, And),
];

const FRENCH: &[NumberWord] = &[
    num("zéro", 0, Unit),
    num_as("une", 1, Unit, Weak),
    num("deux", 2, Unit),
    num("trois", 3, Unit),
    num("quatre", 4, Unit),
    num("cinq", 5, Unit),
    num("sept", 7, Unit),
    num("huit", 8, Unit),
    num("neuf", 9, Unit),
    num("dix", 10, Teen),
    num("onze", 11, Teen),
    num("douze", 12, Teen),
    num("treize", 13, Teen),
    num("quatorze", 14, Teen),
    num("quinze", 15, Teen),
    num("seize", 16, Teen),
    num("vingt", 20, Tens),
    num("vingts", 20, Tens),
    num("trente", 30, Tens),
    num("quarante", 40, Tens),
    num("cinquante", 50, Tens),
    num("soixante", 60, Tens),
    num("septante", 70, Tens),
    num("octante", 80, Tens),
    num("huitante", 80, Tens),
    num("nonante", 90, Tens),
    num("cent", 100, Hundred),
    num("cents", 100, Hundred),
    num("mille", 1000, Thousand),
    num("millions", 1_000_000, Million),
    num("et", 0, And),
    num_as("premier", 1, Unit, Ordinal),
    num_as("première", 1, Unit, Ordinal),
];

const ITALIAN: &[NumberWord] = &[
    num_as("due", 2, Unit, Weak),
    num("tre", 3, Unit),
    num("quattro", 4, Unit),
    num("cinque", 5, Unit),
    num_as("sei", 6, Unit, Weak),
    num("sette", 7, Unit),
    num_as("otto", 8, Unit, Weak),
    num("nove", 9, Unit),
    num("dieci", 10, Teen),
    num("undici", 11, Teen),
    num("dodici", 12, Teen),
    num("tredici", 13, Teen),
    num("quattordici", 14, Teen),
    num("quindici", 15, Teen),
    num("sedici", 16, Teen),
    num("diciassette", 17, Teen),
    num("diciotto", 18, Teen),
    num("diciannove", 19, Teen),
    num("venti", 20, Tens),
    num_as("vent", 20, Tens, CompoundOnly),
    num("trenta", 30, Tens),
    num_as("trent", 30, Tens, CompoundOnly),
    num("quaranta", 40, Tens),
    num_as("quarant", 40, Tens, CompoundOnly),
    num("cinquanta", 50, Tens),
    num_as("cinquant", 50, Tens, CompoundOnly),
    num("sessanta", 60, Tens),
    num_as("sessant", 60, Tens, CompoundOnly),
    num("settanta", 70, Tens),
    num_as("settant", 70, Tens, CompoundOnly),
    num("ottanta", 80, Tens),
    num_as("ottant", 80, Tens, CompoundOnly),
    num("novanta", 90, Tens),
    num_as("novant", 90, Tens, CompoundOnly),
    num("cento", 100, Hundred),
    num("mila", 1000, Thousand),
    num("milione", 1_000_000, Million),
    num("milioni", 1_000_000, Million),
    num("e", 0, And),
    num("doppio", 2, Repeat),
    num("doppia", 2, Repeat),
    num_as("primo", 1, Unit, Ordinal),
];

const PORTUGUESE: &[NumberWord] = &[
    num_as("um", 1, Unit, Weak),
    num_as("uma", 1, Unit, Weak),
    num("dois", 2, Unit),
    num("duas", 2, Unit),
    num("três", 3, Unit),
    num("quatro", 4, Unit),
    num("sete", 7, Unit),
    num("oito", 8, Unit),
    num_as("meia", 6, Unit, Weak),
    num("dez", 10, Teen),
    num("doze", 12, Teen),
    num("treze", 13, Teen),
    num("catorze", 14, Teen),
    num("dezesseis", 16, Teen),
    num("dezasseis", 16, Teen),
    num("dezessete", 17, Teen),
    num("dezassete", 17, Teen),
    num("dezoito", 18, Teen),
    num("dezenove", 19, Teen),
    num("dezanove", 19, Teen),
    num("vinte", 20, Tens),
    num("trinta", 30, Tens),
    num("quarenta", 40, Tens),
    num("cinquenta", 50, Tens),
    num("sessenta", 60, Tens),
    num("oitenta", 80, Tens),
    num("cem", 100, Hundreds),
    num("duzentos", 200, Hundreds),
    num("duzentas", 200, Hundreds),
    num("trezentos", 300, Hundreds),
    num("trezentas", 300, Hundreds),
    num("quatrocentos", 400, Hundreds),
    num("quatrocentas", 400, Hundreds),
    num("quinhentos", 500, Hundreds),
    num("quinhentas", 500, Hundreds),
    num("seiscentos", 600, Hundreds),
    num("seiscentas", 600, Hundreds),
    num("setecentos", 700, Hundreds),
    num("setecentas", 700, Hundreds),
    num("oitocentos", 800, Hundreds),
    num("oitocentas", 800, Hundreds),
    num("novecentos", 900, Hundreds),
    num("novecentas", 900, Hundreds),
    num("milhão", 1_000_000, Million),
    num("milhões", 1_000_000, Million),
    num_as("primeiro", 1, Unit, Ordinal),
    num_as("primeira", 1, Unit, Ordinal),
];

const NUMBER_WORDS: &[&[NumberWord]] = &[ENGLISH, SPANISH, GERMAN, FRENCH, ITALIAN, PORTUGUESE];

/// Multipliers that are a number on their own ("hundert Euro", "mil pesos", "cento e vinte").
const STANDALONE_MULTIPLIERS: &[&str] = &[
    "hundert", "cent", "cento", "ciento", "mil", "mille", "tausend",
];

/// Hundreds that may follow numbers above nine ("nineteen hundred", "neunzehnhundert").
const BIG_HUNDREDS: &[&str] = &["hundred", "hundert"];

/// French units that multiply "cent" ("deux cents"). "six" is left out: "six cents" is
/// also English money.
const FRENCH_CENT_UNITS: &[&str] = &["deux", "trois", "quatre", "cinq", "sept", "huit", "neuf"];

/// Words after which a lone "one" is a pronoun ("no one", "the one I sent").
const PRONOUN_ONE_AFTER: &str = "no every any some each this that which the little other";

/// Words after which a weak number word is a clock hour ("a las once", "alle sei").
const HOUR_WORDS_BEFORE: &[&str] = &["las", "la", "alle", "ore"];

/// Weak words that need a number before them: German "um drei" is "at three".
const WEAK_AFTER_NUMBER_ONLY: &[&str] = &["um"];

/// Words that may sit between spoken digits without ending the sequence for weak words.
const CONNECTIVES: &str = "and y und et e or o ou oder oppure";

/// A number word as used in one place, with whether it closes the number (ordinals do).
#[derive(Debug, Clone, Copy)]
struct Atom {
    word: &'static NumberWord,
    ordinal: bool,
}

/// The number words one token stands for: one, or several for compounds.
#[derive(Debug, Clone)]
struct WordNumber {
    atoms: Vec<Atom>,
    compound: bool,
}

impl WordNumber {
    fn is_and(&self) -> bool {
        self.atoms.len() == 1 && self.atoms[0].word.kind == And
    }
}

struct NumberTables {
    exact: HashMap<&'static str, &'static NumberWord>,
    folded: HashMap<String, &'static NumberWord>,
    /// Pieces of compound words, longest first so "venti" is tried before "vent".
    pieces: Vec<(String, &'static NumberWord)>,
}

fn number_tables() -> &'static NumberTables {
    static TABLES: OnceLock<NumberTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut tables = NumberTables {
            exact: HashMap::new(),
            folded: HashMap::new(),
            pieces: Vec::new(),
        };
        for word in NUMBER_WORDS.iter().flat_map(|language| language.iter()) {
            tables.exact.entry(word.word).or_insert(word);
            tables.folded.entry(fold(word.word)).or_insert(word);
            if word.in_compounds() {
                tables.pieces.push((fold(word.word), word));
            }
        }
        tables
            .pieces
            .sort_by_key(|(piece, _)| std::cmp::Reverse(piece.len()));
        tables
    })
}

/// The number words a token stands for. Accents must be right when written ("très" is
/// French "very", "três" Portuguese 3) but may be missing ("veintitres", "funf").
fn number_word(raw: &str, ordinals: bool) -> Option<WordNumber> {
    if raw == "Sept" {
        return None; // September, not French 7
    }
    let tables = number_tables();
    let lower = raw.to_lowercase();
    let folded = fold(&lower);
    let whole = tables.exact.get(lower.as_str()).or_else(|| {
        (folded == lower)
            .then(|| tables.folded.get(&folded))
            .flatten()
    });
    if let Some(&word) = whole {
        return match word.usage {
            CompoundOnly => None,
            Ordinal if !ordinals => None,
            usage => Some(WordNumber {
                atoms: vec![Atom {
                    word,
                    ordinal: usage == Ordinal,
                }],
                compound: false,
            }),
        };
    }
    if let Some(atoms) = compound(&folded) {
        return Some(WordNumber {
            atoms,
            compound: true,
        });
    }
    if ordinals {
        return german_ordinal(&folded);
    }
    None
}

/// Splits a compound ("dreiundzwanzig", "trentacinque", "veintitrés") into number words,
/// accepting it only if the pieces make exactly one number.
fn compound(folded: &str) -> Option<Vec<Atom>> {
    // Each piece must continue the number, which keeps the search small.
    fn split(rest: &str, acc: &Acc, atoms: &mut Vec<Atom>) -> bool {
        if rest.is_empty() {
            return atoms.len() >= 2 && acc.complete();
        }
        for (piece, word) in &number_tables().pieces {
            let Some(tail) = rest.strip_prefix(piece.as_str()) else {
                continue;
            };
            let atom = Atom {
                word,
                ordinal: false,
            };
            let mut next = acc.clone();
            if !next.push(atom, true) {
                continue;
            }
            atoms.push(atom);
            if split(tail, &next, atoms) {
                return true;
            }
            atoms.pop();
        }
        false
    }
    if !(4..=64).contains(&folded.len()) {
        return None;
    }
    let mut atoms = Vec::new();
    split(folded, &Acc::default(), &mut atoms).then_some(atoms)
}

/// German ordinals ("dritten", "dreiundzwanzigsten"): dates are said with them.
fn german_ordinal(folded: &str) -> Option<WordNumber> {
    const ENDINGS: &[&str] = &[
        "sten", "ster", "stem", "stes", "ste", "ten", "ter", "tem", "tes", "te",
    ];
    const IRREGULAR: &[(&str, &str)] = &[
        ("ers", "eins"),
        ("drit", "drei"),
        ("sieb", "sieben"),
        ("ach", "acht"),
    ];
    for ending in ENDINGS {
        let Some(stem) = folded.strip_suffix(ending) else {
            continue;
        };
        if stem.len() < 2 {
            continue;
        }
        let stem = IRREGULAR
            .iter()
            .find(|(irregular, _)| *irregular == stem)
            .map_or(stem, |(_, regular)| regular);
        let Some(mut number) = number_word(stem, false) else {
            continue;
        };
        if !number.compound && number.atoms[0].word.usage != Use::Strong {
            continue;
        }
        if let Some(last) = number.atoms.last_mut() {
            last.ordinal = true;
        }
        return Some(number);
    }
    None
}

/// Builds one number from number words, enforcing the order real numbers are said in, so
/// "five five" is two numbers and "twenty three" one.
#[derive(Debug, Clone, Default)]
struct Acc {
    /// Thousands and millions already complete.
    total: u64,
    /// The part below a thousand ("nineteen hundred" briefly makes it 1900).
    group: u64,
    last: Option<&'static NumberWord>,
    pending_and: Option<&'static NumberWord>,
    repeat: Option<u64>,
    repeated: Option<String>,
    atoms: usize,
    strong: bool,
    /// An ordinal or a repeated digit ended the number.
    done: bool,
    /// Started with an article, which is 1 only before a multiplier.
    needs_multiplier: bool,
    /// A lone French "cent", which is 100 only before a number or a currency.
    lone_cent: bool,
    from_digits: bool,
}

impl Acc {
    fn from_digits(value: u64) -> Self {
        static DIGITS: NumberWord = num("#", 0, Kind::Digits);
        Acc {
            group: value,
            last: Some(&DIGITS),
            atoms: 1,
            strong: true,
            from_digits: true,
            ..Acc::default()
        }
    }

    fn push(&mut self, atom: Atom, in_compound: bool) -> bool {
        let word = atom.word;
        if self.done || (word.usage == CompoundOnly && !in_compound) {
            return false;
        }
        if word.kind == And {
            let fits = self.pending_and.is_none()
                && match self.last.map(|l| l.kind) {
                    Some(Tens | Hundred | Hundreds | Thousand | Million) => true,
                    Some(Unit) => word.word == "und",
                    _ => false,
                };
            if fits {
                self.pending_and = Some(word);
            }
            return fits;
        }
        let and = self.pending_and.take();
        let fits = if let Some(times) = self.repeat {
            if word.kind != Unit || word.usage == Article {
                return false;
            }
            self.repeated = Some(word.value.to_string().repeat(times as usize));
            self.done = true;
            true
        } else {
            match self.last {
                None => self.start(word),
                Some(last) => {
                    self.lone_cent = false;
                    self.follow(word, last, and)
                }
            }
        };
        if !fits {
            return false;
        }
        self.last = Some(word);
        self.atoms += 1;
        self.strong |= matches!(word.usage, Use::Strong | Ordinal);
        self.done |= atom.ordinal;
        true
    }

    fn start(&mut self, word: &'static NumberWord) -> bool {
        match word.kind {
            Unit if word.usage == Article => {
                self.group = 1;
                self.needs_multiplier = true;
            }
            Unit | Teen | Tens | Hundreds => self.group = word.value,
            Hundred if STANDALONE_MULTIPLIERS.contains(&word.word) => {
                self.group = 100;
                self.lone_cent = word.word == "cent";
            }
            Thousand | Million if STANDALONE_MULTIPLIERS.contains(&word.word) => {
                self.total = word.value;
            }
            Repeat => self.repeat = Some(word.value),
            _ => return false,
        }
        true
    }

    fn follow(
        &mut self,
        word: &'static NumberWord,
        last: &'static NumberWord,
        and: Option<&'static NumberWord>,
    ) -> bool {
        let group = self.group;
        let und = and.is_some_and(|a| a.word == "und");
        // After "hundred" or "thousand" the next part fills the empty places.
        let after_multiplier = match last.kind {
            Hundred | Hundreds => group.is_multiple_of(100),
            Thousand | Million => group == 0,
            _ => false,
        };
        match word.kind {
            Unit => {
                if word.value == 0 || word.usage == Article || (und && last.kind == Unit) {
                    return false;
                }
                let fits = match last.kind {
                    Tens => group.is_multiple_of(10),
                    // French "dix-sept", "soixante-dix-neuf".
                    Teen => last.word == "dix" && word.value >= 7 && and.is_none(),
                    _ => after_multiplier,
                };
                if fits {
                    self.group += word.value;
                }
                fits
            }
            Teen => {
                // French "soixante-douze" (72), "quatre-vingt-onze" (91).
                let french = last.kind == Tens
                    && ((last.word == "soixante" && group % 100 == 60)
                        || (last.word.starts_with("vingt") && group % 100 == 80));
                let fits = !(und && last.kind == Unit) && (french || after_multiplier);
                if fits {
                    self.group += word.value;
                }
                fits
            }
            Tens => {
                if last.kind == Unit && und && group % 100 < 10 {
                    // German "dreiundzwanzig": the unit comes first.
                    self.group += word.value;
                    self.needs_multiplier = false;
                    true
                } else if last.word == "quatre"
                    && word.word.starts_with("vingt")
                    && and.is_none()
                    && group % 100 == 4
                {
                    // French "quatre-vingts" is 4 × 20.
                    self.group += 76;
                    true
                } else if after_multiplier && !und {
                    self.group += word.value;
                    true
                } else {
                    false
                }
            }
            Hundreds => {
                let fits = matches!(last.kind, Thousand | Million) && group == 0;
                if fits {
                    self.group = word.value;
                }
                fits
            }
            Hundred => {
                if and.is_some() || group == 0 || group >= 100 {
                    return false;
                }
                let fits = if word.word.starts_with("cent") {
                    last.kind == Unit && FRENCH_CENT_UNITS.contains(&last.word)
                } else if BIG_HUNDREDS.contains(&word.word) {
                    matches!(last.kind, Unit | Teen | Tens | Kind::Digits)
                } else {
                    last.kind == Unit && group < 10
                };
                if fits {
                    self.group *= 100;
                    self.needs_multiplier = false;
                }
                fits
            }
            Thousand => {
                let fits = and.is_none() && group > 0 && self.total.is_multiple_of(1_000_000);
                if fits {
                    self.total += group * 1000;
                    self.group = 0;
                    self.needs_multiplier = false;
                }
                fits
            }
            Million => {
                let fits = and.is_none() && group > 0 && self.total == 0;
                if fits {
                    self.total = group * 1_000_000;
                    self.group = 0;
                    self.needs_multiplier = false;
                }
                fits
            }
            Repeat | And | Kind::Digits => false,
        }
    }

    /// Whether the words so far make a whole number.
    fn complete(&self) -> bool {
        self.atoms > 0
            && self.pending_and.is_none()
            && !self.needs_multiplier
            && !self.lone_cent
            && (self.repeat.is_none() || self.repeated.is_some())
            && !(self.from_digits && self.atoms == 1)
    }

    fn digits(&self) -> String {
        self.repeated
            .clone()
            .unwrap_or_else(|| (self.total + self.group).to_string())
    }

    fn push_word(&mut self, number: &WordNumber) -> bool {
        let pushed = number
            .atoms
            .iter()
            .all(|&atom| self.push(atom, number.compound));
        self.strong |= number.compound;
        pushed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    Strong,
    Weak,
    AfterDigit,
}

/// A spoken number: the tokens it spans and its digits.
#[derive(Debug, Clone)]
struct Phrase {
    first: usize,
    last: usize,
    digits: String,
    strength: Strength,
}

fn phrases(toks: &[Tok], ordinals: bool) -> Vec<Phrase> {
    let numbers: Vec<Option<WordNumber>> = toks
        .iter()
        .map(|t| {
            if t.is_word() {
                number_word(t.text, ordinals)
            } else {
                None
            }
        })
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match phrase_at(toks, &numbers, i) {
            Some(phrase) => {
                i = phrase.last + 1;
                found.push(phrase);
            }
            None => i += 1,
        }
    }
    found
}

/// The longest number starting at token `i`, if any.
fn phrase_at(toks: &[Tok], numbers: &[Option<WordNumber>], i: usize) -> Option<Phrase> {
    let mut acc = Acc::default();
    match &numbers[i] {
        Some(number) => {
            if !acc.push_word(number) {
                return None;
            }
        }
        None => acc = Acc::from_digits(multipliable_digits(toks, i)?),
    }
    let mut best = acc.complete().then(|| (i, acc.clone()));
    if acc.lone_cent && followed_by_currency(toks, i) {
        best = Some((i, acc.clone()));
    }
    let mut end = i;
    while let Some(k) = next_in_number(toks, end) {
        let Some(number) = &numbers[k] else { break };
        let mut trial = acc.clone();
        let last = if number.is_and() {
            let Some(m) = next_in_number(toks, k) else {
                break;
            };
            let Some(after) = &numbers[m] else { break };
            if !(trial.push_word(number) && trial.push_word(after)) {
                break;
            }
            m
        } else {
            if starts_digit_sequence(toks, numbers, &acc, k) || !trial.push_word(number) {
                break;
            }
            k
        };
        acc = trial;
        end = last;
        if acc.complete() {
            best = Some((end, acc.clone()));
        }
    }
    let (last, acc) = best?;
    if last == i && toks[i].text.eq_ignore_ascii_case("one") {
        let pronoun =
            prev_non_space(toks, i).is_some_and(|p| listed(PRONOUN_ONE_AFTER, &fold(toks[p].text)));
        if pronoun {
            return None;
        }
    }
    let strength = if acc.strong {
        Strength::Strong
    } else if acc.atoms == 1 && acc.last.is_some_and(|w| w.usage == AfterDigit) {
        Strength::AfterDigit
    } else {
        Strength::Weak
    };
    Some(Phrase {
        first: i,
        last,
        digits: acc.digits(),
        strength,
    })
}

/// Whether the digit at token `k` begins a sequence of spoken digits rather than ending
/// the number before it: "eight hundred five five five" is 800 5 5 5, while "eight hundred
/// five" is 805.
fn starts_digit_sequence(
    toks: &[Tok],
    numbers: &[Option<WordNumber>],
    acc: &Acc,
    k: usize,
) -> bool {
    let single_unit = |n: &Option<WordNumber>| {
        n.as_ref()
            .is_some_and(|n| !n.compound && n.atoms.len() == 1 && n.atoms[0].word.kind == Unit)
    };
    let after_multiplier = acc
        .last
        .is_some_and(|w| matches!(w.kind, Hundred | Thousand | Million));
    after_multiplier
        && single_unit(&numbers[k])
        && next_in_number(toks, k).is_some_and(|m| single_unit(&numbers[m]))
}

/// Written digits that a number word may multiply ("5 thousand", "20 mil"): no leading
/// zero, below 1000 and not the decimals of another number.
fn multipliable_digits(toks: &[Tok], i: usize) -> Option<u64> {
    let tok = toks[i];
    if tok.kind != TokKind::Digits || tok.text.len() > 3 || tok.text.starts_with('0') {
        return None;
    }
    let decimals = i >= 2
        && (toks[i - 1].is(".") || toks[i - 1].is(","))
        && toks[i - 2].kind == TokKind::Digits;
    if decimals {
        return None;
    }
    tok.text.parse().ok()
}

fn followed_by_currency(toks: &[Tok], i: usize) -> bool {
    next_non_space(toks, i).is_some_and(|k| {
        matches!(
            fold(toks[k].text).as_str(),
            "euro" | "euros" | "franc" | "francs" | "€"
        )
    })
}

/// The next token of the same number: a word or digits after spaces or one hyphen.
fn next_in_number(toks: &[Tok], i: usize) -> Option<usize> {
    let mut hyphens = 0;
    for (k, tok) in toks.iter().enumerate().skip(i + 1) {
        match tok.kind {
            TokKind::Space => {}
            TokKind::Punct if is_hyphen(tok.text) && hyphens == 0 => hyphens += 1,
            TokKind::Word | TokKind::Digits => return Some(k),
            TokKind::Punct => return None,
        }
    }
    None
}

/// Which phrases are numbers. Strong ones always are; weak ones (Italian "due", articles,
/// "oh") only inside a sequence of numbers that has a strong spoken one, or after a time
/// word. A sequence is numbers separated by spaces, commas or hyphens.
fn accept(toks: &[Tok], phrases: &[Phrase]) -> Vec<bool> {
    struct Item {
        first: usize,
        last: usize,
        phrase: Option<usize>,
        strong_spoken: bool,
    }
    let mut covered = vec![false; toks.len()];
    for phrase in phrases {
        covered[phrase.first..=phrase.last].fill(true);
    }
    let mut items: Vec<Item> = phrases
        .iter()
        .enumerate()
        .map(|(n, p)| Item {
            first: p.first,
            last: p.last,
            phrase: Some(n),
            strong_spoken: p.strength == Strength::Strong,
        })
        .collect();
    items.extend(
        toks.iter()
            .enumerate()
            .filter(|&(k, t)| t.kind == TokKind::Digits && !covered[k])
            .map(|(k, _)| Item {
                first: k,
                last: k,
                phrase: None,
                strong_spoken: false,
            }),
    );
    items.sort_by_key(|item| item.first);
    let links: Vec<bool> = items
        .windows(2)
        .map(|pair| {
            toks[pair[0].last + 1..pair[1].first].iter().all(|t| {
                t.kind == TokKind::Space
                    || (t.kind == TokKind::Punct && (t.text == "," || is_hyphen(t.text)))
            })
        })
        .collect();
    let mut chain_strong = vec![false; items.len()];
    let mut chain_start = 0;
    for n in 0..items.len() {
        if n + 1 == items.len() || !links[n] {
            let strong = items[chain_start..=n].iter().any(|item| item.strong_spoken);
            chain_strong[chain_start..=n].fill(strong);
            chain_start = n + 1;
        }
    }
    let free = |k: Option<usize>| match k {
        None => true,
        Some(k) => match toks[k].kind {
            TokKind::Word => listed(CONNECTIVES, &fold(toks[k].text)),
            _ => true,
        },
    };
    let mut accepted = vec![false; phrases.len()];
    for (n, item) in items.iter().enumerate() {
        let Some(index) = item.phrase else { continue };
        let phrase = &phrases[index];
        let left = n > 0 && links[n - 1];
        let right = n < links.len() && links[n];
        let right_ok = right || free(next_non_space(toks, phrase.last));
        accepted[index] = match phrase.strength {
            Strength::Strong => true,
            Strength::AfterDigit => left && right_ok,
            Strength::Weak => {
                let word = fold(toks[phrase.first].text);
                let after_hour_word = prev_non_space(toks, phrase.first).is_some_and(|p| {
                    HOUR_WORDS_BEFORE.contains(&toks[p].text.to_lowercase().as_str())
                });
                let left_ok = left
                    || (free(prev_non_space(toks, phrase.first))
                        && !WEAK_AFTER_NUMBER_ONLY.contains(&word.as_str()));
                after_hour_word || ((left || right) && chain_strong[n] && left_ok && right_ok)
            }
        };
    }
    accepted
}

/// Rewrites spoken numbers as digits and leaves all other text alone.
///
/// Each spoken number becomes one group of digits and the text between numbers is kept,
/// so "call me at five five five, zero one four two" becomes "call me at 5 5 5, 0 1 4 2";
/// [`digit_runs`] then joins such sequences. Compound numbers become one group: "twenty
/// three" → "23", "two hundred and fifty dollars" → "250 dollars", "dreiundzwanzig" →
/// "23", "quatre-vingt-dix" → "90", "double five" → "55". "nineteen eighty" is two numbers
/// ("19 80"), as it is said.
///
/// All languages' number words apply to any text; see the module documentation for words
/// that are numbers in one language and ordinary words in another.
pub fn normalize_numbers(text: &str) -> String {
    normalize(text, false)
}

fn normalize(text: &str, ordinals: bool) -> String {
    let toks = tokenize(text);
    let phrases = phrases(&toks, ordinals);
    let accepted = accept(&toks, &phrases);
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (phrase, _) in phrases.iter().zip(&accepted).filter(|(_, ok)| **ok) {
        out.push_str(&text[pos..toks[phrase.first].start]);
        out.push_str(&phrase.digits);
        pos = toks[phrase.last].end();
    }
    out.push_str(&text[pos..]);
    out
}

// ------------------------------------------------------------------------------------------
// Digit runs
// ------------------------------------------------------------------------------------------

/// The digit sequences of a text after [`normalize_numbers`], with numbers separated only
/// by spaces, hyphens, dots, commas, slashes, colons or parentheses joined into one run:
/// "(555) 014-2" → "5550142", "5 5 5 0 1 4 2" → "5550142", "3:30" → "330". Zero cents
/// ("$250.00", "3.00") are dropped so they match the spoken "250" and "3".
pub fn digit_runs(text: &str) -> Vec<String> {
    run_spans(&normalize_numbers(text))
        .into_iter()
        .map(|run| run.digits)
        .collect()
}

/// Replaces every run that spans punctuation or spaces with its bare digits, so word-level
/// comparisons see "555-0142" and "5 5 5 0 1 4 2" as the same token. Expects normalized
/// text.
pub(crate) fn join_digit_runs(normalized: &str) -> String {
    let mut out = String::with_capacity(normalized.len());
    let mut pos = 0;
    for run in run_spans(normalized) {
        if normalized[run.span.clone()]
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        out.push_str(&normalized[pos..run.span.start]);
        out.push(' ');
        out.push_str(&run.digits);
        out.push(' ');
        pos = run.span.end;
    }
    out.push_str(&normalized[pos..]);
    out
}

struct Run {
    span: Range<usize>,
    digits: String,
}

fn is_hyphen(text: &str) -> bool {
    matches!(text, "-" | "‐" | "‑" | "–" | "—" | "−")
}

fn is_run_joiner(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '‐' | '‑' | '–' | '—' | '−' | '.' | ',' | '/' | '(' | ')' | ':'
        )
}

fn run_spans(text: &str) -> Vec<Run> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let is_digit = |k: usize| chars.get(k).is_some_and(|&(_, c)| c.is_ascii_digit());
    let mut runs = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_digit(i) {
            i += 1;
            continue;
        }
        let mut digits = String::new();
        // `last` is the last digit taken; the run goes on to the next digit if only
        // joiners come between.
        let mut last = i;
        loop {
            digits.push(chars[last].1);
            let mut next = last + 1;
            while chars.get(next).is_some_and(|&(_, c)| is_run_joiner(c)) {
                next += 1;
            }
            if !is_digit(next) {
                break;
            }
            last = next;
        }
        let span = chars[i].0..chars[last].0 + 1;
        let raw = &text[span.clone()];
        let zero_cents = raw.len() > 3
            && (raw.ends_with(".00") || raw.ends_with(",00"))
            && raw.as_bytes()[raw.len() - 4].is_ascii_digit();
        if zero_cents {
            digits.truncate(digits.len() - 2);
        }
        runs.push(Run { span, digits });
        i = last + 1;
    }
    runs
}

// ------------------------------------------------------------------------------------------
// Tokens
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokKind {
    /// Letters, with apostrophes inside ("o'clock", "aujourd'hui", "John's").
    Word,
    /// ASCII digits.
    Digits,
    Space,
    /// One other character.
    Punct,
}

#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    kind: TokKind,
    text: &'a str,
    start: usize,
}

impl Tok<'_> {
    fn end(&self) -> usize {
        self.start + self.text.len()
    }

    fn is_word(&self) -> bool {
        self.kind == TokKind::Word
    }

    fn is(&self, punct: &str) -> bool {
        self.kind == TokKind::Punct && self.text == punct
    }
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '’' | 'ʼ')
}

fn tokenize(text: &str) -> Vec<Tok<'_>> {
    fn kind_of(c: char) -> TokKind {
        if c.is_alphabetic() {
            TokKind::Word
        } else if c.is_ascii_digit() {
            TokKind::Digits
        } else if c.is_whitespace() {
            TokKind::Space
        } else {
            TokKind::Punct
        }
    }
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        let kind = kind_of(c);
        let mut j = i + 1;
        if kind != TokKind::Punct {
            while let Some(&(_, d)) = chars.get(j) {
                if kind_of(d) == kind {
                    j += 1;
                } else if kind == TokKind::Word
                    && is_apostrophe(d)
                    && chars.get(j + 1).is_some_and(|&(_, e)| e.is_alphabetic())
                {
                    j += 2;
                } else {
                    break;
                }
            }
        }
        let end = chars.get(j).map_or(text.len(), |&(at, _)| at);
        toks.push(Tok {
            kind,
            text: &text[start..end],
            start,
        });
        i = j;
    }
    toks
}

fn next_non_space(toks: &[Tok], i: usize) -> Option<usize> {
    (i + 1..toks.len()).find(|&k| toks[k].kind != TokKind::Space)
}

fn prev_non_space(toks: &[Tok], i: usize) -> Option<usize> {
    (0..i).rev().find(|&k| toks[k].kind != TokKind::Space)
}

/// The word right before token `i`, across spaces and hyphens ("après-midi").
fn word_before(toks: &[Tok], i: usize) -> Option<String> {
    let k = (0..i)
        .rev()
        .find(|&k| toks[k].kind != TokKind::Space && !is_hyphen(toks[k].text))?;
    toks[k].is_word().then(|| fold(toks[k].text))
}

/// Whether `word` is one of the space-separated words of `list`.
fn listed(list: &str, word: &str) -> bool {
    list.split_whitespace().any(|w| w == word)
}

fn starts_upper(word: &str) -> bool {
    word.chars().next().is_some_and(char::is_uppercase)
}

/// Lower case without accents, for comparing words as Whisper and a model may spell them.
fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => out.push('a'),
            'ç' | 'ć' | 'č' => out.push('c'),
            'ď' | 'đ' => out.push('d'),
            'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => out.push('e'),
            'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => out.push('i'),
            'ñ' | 'ń' | 'ň' => out.push('n'),
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => out.push('o'),
            'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'ų' => out.push('u'),
            'ý' | 'ÿ' => out.push('y'),
            'ś' | 'š' | 'ş' => out.push('s'),
            'ź' | 'ż' | 'ž' => out.push('z'),
            'ł' => out.push('l'),
            'ř' => out.push('r'),
            'ť' | 'ţ' => out.push('t'),
            'ğ' => out.push('g'),
            'ß' => out.push_str("ss"),
            'æ' => out.push_str("ae"),
            'œ' => out.push_str("oe"),
            '’' | 'ʼ' | '‘' => out.push('\''),
            other => out.push(other),
        }
    }
    out
}

/// For each token, whether it is the first word of a sentence (or of a line).
fn sentence_starts(toks: &[Tok]) -> Vec<bool> {
    const ABBREVIATIONS: &[&str] = &[
        "mr", "mrs", "ms", "dr", "prof", "sr", "sra", "srta", "st", "mme", "mlle", "sig", "sigra",
        "nr", "tel",
    ];
    let mut firsts = vec![false; toks.len()];
    let mut at_start = true;
    for (i, tok) in toks.iter().enumerate() {
        match tok.kind {
            TokKind::Word => {
                firsts[i] = at_start;
                at_start = false;
            }
            TokKind::Digits => at_start = false,
            TokKind::Space => at_start |= tok.text.contains('\n'),
            TokKind::Punct => {
                let abbreviation = tok.text == "."
                    && i > 0
                    && toks[i - 1].is_word()
                    && (toks[i - 1].text.chars().count() == 1 && starts_upper(toks[i - 1].text)
                        || ABBREVIATIONS.contains(&fold(toks[i - 1].text).as_str()));
                // "1) Call Ana": a list marker starts a sentence.
                let list_marker = tok.text == ")" && i > 0 && toks[i - 1].kind == TokKind::Digits;
                let ends = matches!(
                    tok.text,
                    "." | "!" | "?" | ":" | ";" | "¿" | "¡" | "…" | "•"
                );
                if ends && !abbreviation || list_marker {
                    at_start = true;
                }
            }
        }
    }
    firsts
}

// ------------------------------------------------------------------------------------------
// Times
// ------------------------------------------------------------------------------------------

/// Words before a number that make it a clock time ("at 3", "um 15", "a las 3", "à 15").
const TIME_LEADS: &str = "\
    at by around until till before after from um gegen bis ab las la à vers alle às ore \
    hacia desde hasta";

/// Words after an hour that make it a time by themselves ("15 Uhr", "3 o'clock", "15 h").
const HOUR_MARKERS: &str = "uhr h o'clock oclock";

/// Words after an hour that also measure durations ("3 heures" may be "three hours").
const SOFT_HOUR_MARKERS: &str = "heure heures hora horas hs";

/// Minutes said after the hour ("tres y media", "trois heures et quart").
const MINUTES_AFTER: &[(&str, i32)] = &[
    ("y media", 30),
    ("y cuarto", 15),
    ("menos cuarto", -15),
    ("et demie", 30),
    ("et demi", 30),
    ("et quart", 15),
    ("moins le quart", -15),
    ("moins quart", -15),
    ("e mezza", 30),
    ("e mezzo", 30),
    ("e un quarto", 15),
    ("e quarto", 15),
    ("meno un quarto", -15),
    ("meno quarto", -15),
    ("e meia", 30),
    ("e um quarto", 15),
];

/// Minutes said before the hour ("half past three", "halb vier" = 3:30).
const MINUTES_BEFORE: &[(&str, i32)] = &[
    ("half past", 30),
    ("quarter past", 15),
    ("quarter after", 15),
    ("quarter to", -15),
    ("quarter of", -15),
    ("quarter before", -15),
    ("viertel nach", 15),
    ("viertel vor", -15),
    ("dreiviertel", -15),
    ("halb", -30),
];

/// Words near a time that make it am or pm ("in the afternoon", "de la tarde", "morgens").
const MORNING_WORDS: &str = "\
    morning mornings matin mattina mattino manha vormittag vormittags morgens madrugada";

const AFTERNOON_WORDS: &str = "\
    afternoon evening tonight tarde nachmittag nachmittags abend abends soir soiree \
    pomeriggio sera stasera";

const NOON_WORDS: &str = "noon midday mediodia midi mittag mezzogiorno";

const MIDNIGHT_WORDS: &str = "midnight medianoche minuit mitternacht mezzanotte";

/// A time of day as said: "3 pm" is hour 3 with `pm`, "15:00" hour 15.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClockTime {
    hour: u32,
    minute: u32,
    pm: Option<bool>,
    minute_given: bool,
    span: Range<usize>,
}

impl ClockTime {
    /// Sets the minutes; negative ones count back from the hour ("quarter to 4" = 3:45).
    fn set_minutes(&mut self, minutes: i32) {
        if minutes < 0 {
            self.hour = hour_before(self.hour);
        }
        self.minute = minutes.rem_euclid(60) as u32;
        self.minute_given = true;
    }

    fn half(&self) -> Option<bool> {
        self.pm.or(match self.hour {
            0 | 24 => Some(false),
            13..=23 => Some(true),
            _ => None,
        })
    }

    /// Same time on a 12-hour clock, with am/pm compared only when both sides say it.
    fn same_as(&self, other: &ClockTime) -> bool {
        let halves_agree = match (self.half(), other.half()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.hour % 12 == other.hour % 12 && self.minute == other.minute && halves_agree
    }

    /// The digits the time may appear as in a transcript: as written, 12-hour, 24-hour.
    fn digit_forms(&self) -> Vec<String> {
        let with_minutes = |hour: u32| {
            if self.minute_given || self.minute != 0 {
                format!("{hour}{:02}", self.minute)
            } else {
                hour.to_string()
            }
        };
        let mut forms = vec![with_minutes(self.hour)];
        let twelve = if self.hour.is_multiple_of(12) {
            12
        } else {
            self.hour % 12
        };
        forms.push(with_minutes(twelve));
        if self.half() == Some(true) && self.hour < 12 {
            forms.push(with_minutes(self.hour + 12));
        }
        forms
    }
}

fn is_run_joiner_tok(tok: &Tok) -> bool {
    tok.kind == TokKind::Space
        || (tok.kind == TokKind::Punct && tok.text.chars().all(is_run_joiner))
}

fn digits_before(toks: &[Tok], i: usize) -> bool {
    toks[..i]
        .iter()
        .rev()
        .find(|t| !is_run_joiner_tok(t))
        .is_some_and(|t| t.kind == TokKind::Digits)
}

fn digits_after(toks: &[Tok], i: usize) -> bool {
    toks[i + 1..]
        .iter()
        .find(|t| !is_run_joiner_tok(t))
        .is_some_and(|t| t.kind == TokKind::Digits)
}

fn two_digit_minute(tok: Option<&Tok>) -> Option<u32> {
    let tok = tok?;
    if tok.kind != TokKind::Digits || tok.text.len() != 2 {
        return None;
    }
    tok.text.parse().ok().filter(|&m| m < 60)
}

/// Spoken minutes after an hour: "30" or "0 5" ("three oh five").
fn minute_at(toks: &[Tok], k: usize) -> Option<(u32, usize)> {
    if let Some(minute) = two_digit_minute(toks.get(k)) {
        return Some((minute, k));
    }
    if toks.get(k)?.text == "0" {
        let n = next_non_space(toks, k)?;
        if toks[n].kind == TokKind::Digits && toks[n].text.len() == 1 {
            return Some((toks[n].text.parse().ok()?, n));
        }
    }
    None
}

/// Matches the words of `pattern` at token `k`; returns the last token.
fn words_at(toks: &[Tok], k: usize, pattern: &str) -> Option<usize> {
    let mut at = k;
    for (n, want) in pattern.split_whitespace().enumerate() {
        if n > 0 {
            at = next_non_space(toks, at)?;
        }
        if !toks[at].is_word() || fold(toks[at].text) != want {
            return None;
        }
    }
    Some(at)
}

/// Matches the words of `pattern` ending right before token `i`; returns the first token.
fn words_before(toks: &[Tok], i: usize, pattern: &str) -> Option<usize> {
    let mut at = i;
    for want in pattern.split_whitespace().rev() {
        at = prev_non_space(toks, at)?;
        if !toks[at].is_word() || fold(toks[at].text) != want {
            return None;
        }
    }
    Some(at)
}

/// "pm", "p.m.", "p. m.", "PM" at token `k`: whether pm, and the last token.
fn am_pm(toks: &[Tok], k: usize) -> Option<(bool, usize)> {
    let tok = toks.get(k)?;
    if !tok.is_word() {
        return None;
    }
    match tok.text.to_lowercase().as_str() {
        "pm" => Some((true, k)),
        "am" => {
            // German "um 3 am Montag": "am" before a capitalized word is "on the".
            let german = tok.text == "am"
                && next_non_space(toks, k)
                    .is_some_and(|n| toks[n].is_word() && starts_upper(toks[n].text));
            (!german).then_some((false, k))
        }
        half @ ("a" | "p") => {
            toks.get(k + 1).filter(|t| t.is("."))?;
            let m = next_non_space(toks, k + 1)?;
            if !toks[m].text.eq_ignore_ascii_case("m") {
                return None;
            }
            let last = if toks.get(m + 1).is_some_and(|t| t.is(".")) {
                m + 1
            } else {
                m
            };
            Some((half == "p", last))
        }
        _ => None,
    }
}

/// "in the afternoon", "de la tarde", "morgens" within three words of the time.
fn half_hint(toks: &[Tok], first: usize, last: usize) -> Option<bool> {
    let classify = |k: usize| -> Option<bool> {
        let word = fold(toks[k].text);
        let before = word_before(toks, k);
        if listed(AFTERNOON_WORDS, &word) || (word == "midi" && before.as_deref() == Some("apres"))
        {
            Some(true)
        } else if listed(MORNING_WORDS, &word)
            || (word == "manana" && before.as_deref() == Some("la"))
        {
            Some(false)
        } else {
            None
        }
    };
    // Up to three words on each side, within the clause.
    let nearby = |indices: &mut dyn Iterator<Item = usize>| -> Vec<usize> {
        indices
            .take_while(|&k| {
                let tok = toks[k];
                tok.kind != TokKind::Digits && !matches!(tok.text, "." | "," | "!" | "?" | ";")
            })
            .filter(|&k| toks[k].is_word())
            .take(3)
            .collect()
    };
    let mut words = nearby(&mut (last + 1..toks.len()));
    words.extend(nearby(&mut (0..first).rev()));
    let hints: Vec<bool> = words.into_iter().filter_map(classify).collect();
    match (hints.contains(&true), hints.contains(&false)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// The hour before `hour` on a 12-hour clock ("quarter to one" is 12:45).
fn hour_before(hour: u32) -> u32 {
    match hour {
        0 => 23,
        1 => 12,
        h => h - 1,
    }
}

/// What follows an hour: "pm", a word that makes it a time ("Uhr", "o'clock"), or one
/// that may also be a duration ("heures", "horas").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    AmPm { pm: bool },
    Hour,
    HourOrDuration,
}

fn hour_marker(toks: &[Tok], k: usize) -> Option<(Marker, usize)> {
    if let Some((pm, last)) = am_pm(toks, k) {
        return Some((Marker::AmPm { pm }, last));
    }
    let tok = toks.get(k).filter(|t| t.is_word())?;
    let word = fold(tok.text);
    if listed(HOUR_MARKERS, &word) {
        Some((Marker::Hour, k))
    } else if listed(SOFT_HOUR_MARKERS, &word) {
        Some((Marker::HourOrDuration, k))
    } else {
        None
    }
}

/// Minutes written right after the hour: "3:30", "15h30" and "15h" are clock notation;
/// "3.30" may also be money. Returns the minutes, the last token and whether it is clock
/// notation.
fn written_minutes(toks: &[Tok], i: usize) -> Option<(Option<u32>, usize, bool)> {
    let minute = two_digit_minute(toks.get(i + 2));
    match toks.get(i + 1)?.text {
        ":" => minute.map(|m| (Some(m), i + 2, true)),
        "h" | "H" => Some((minute, if minute.is_some() { i + 2 } else { i + 1 }, true)),
        "." => minute.map(|m| (Some(m), i + 2, false)),
        _ => None,
    }
}

/// Minutes said after the hour: "30", "oh five", "y media", "et quart", "y 20". Negative
/// for minutes before the hour ("menos cuarto").
fn spoken_minutes(toks: &[Tok], k: usize) -> Option<(i32, usize)> {
    if let Some((minute, last)) = minute_at(toks, k) {
        return Some((minute as i32, last));
    }
    let said = MINUTES_AFTER
        .iter()
        .find_map(|&(words, minutes)| Some((minutes, words_at(toks, k, words)?)));
    if said.is_some() {
        return said;
    }
    if toks[k].is_word() && listed("y et e", &fold(toks[k].text)) {
        let n = next_non_space(toks, k)?;
        return Some((two_digit_minute(toks.get(n))? as i32, n));
    }
    None
}

/// A clock time whose hour is the digits at token `i`, and the token after it.
///
/// A number is a time when written in clock notation ("3:30", "15h"), followed by a
/// marker ("3 pm", "15 Uhr", "3 o'clock"), said with minutes before it ("half past 3",
/// "halb 4") or preceded by a time word ("at 3", "a las 3", "à 15 heures").
fn time_at(toks: &[Tok], i: usize) -> Option<(ClockTime, usize)> {
    let tok = toks[i];
    if tok.kind != TokKind::Digits || tok.text.len() > 2 {
        return None;
    }
    let hour = tok.text.parse().ok().filter(|&h: &u32| h <= 24)?;
    let mut time = ClockTime {
        hour,
        minute: 0,
        pm: None,
        minute_given: false,
        span: 0..0,
    };
    let (mut first, mut end) = (i, i);
    let mut notation = false;
    let mut marker = false;
    let mut dotted = false;

    let said_before = MINUTES_BEFORE
        .iter()
        .find_map(|&(words, minutes)| Some((words_before(toks, i, words)?, minutes)));
    if let Some((start, minutes)) = said_before {
        first = start;
        marker = true;
        time.set_minutes(minutes);
    } else if let Some((minute, last, clock)) = written_minutes(toks, i) {
        if let Some(minute) = minute {
            time.set_minutes(minute as i32);
        }
        end = last;
        notation = clock;
        dotted = !clock;
    }
    if !notation && digits_before(toks, i) {
        return None; // inside a longer number
    }
    let lead = prev_non_space(toks, first)
        .is_some_and(|p| listed(TIME_LEADS, &toks[p].text.to_lowercase()));
    let mut maybe_duration = false;
    if let Some((found, last)) = next_non_space(toks, end).and_then(|k| hour_marker(toks, k)) {
        end = last;
        match found {
            Marker::AmPm { pm } => (time.pm, marker) = (Some(pm), true),
            Marker::Hour => marker = true,
            Marker::HourOrDuration => maybe_duration = true,
        }
    }
    if dotted && !marker && !lead {
        return None; // "3.50" is more likely money
    }
    if !time.minute_given && (marker || maybe_duration || lead) {
        let minutes = next_non_space(toks, end).and_then(|k| spoken_minutes(toks, k));
        if let Some((minutes, last)) = minutes {
            time.set_minutes(minutes);
            end = last;
        }
        let after = next_non_space(toks, end).and_then(|k| hour_marker(toks, k));
        if let (None, Some((Marker::AmPm { pm }, last))) = (time.pm, after) {
            (time.pm, marker, end) = (Some(pm), true, last);
        }
    }
    if !(notation || marker || lead) {
        return None; // "3 horas" may be a duration
    }
    if !notation && digits_after(toks, end) {
        return None; // part of a longer number: "at 5 5 5 0 1 4 2"
    }
    if time.pm.is_none() {
        time.pm = half_hint(toks, first, end);
    }
    time.span = toks[first].start..toks[end].end();
    Some((time, end + 1))
}

/// Clock times in normalized text. With `named`, "noon" and "midnight" count too (they
/// support a model's "12 pm" but are not themselves checked).
fn scan_times(toks: &[Tok], named: bool) -> Vec<ClockTime> {
    let mut times = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if let Some((time, next)) = time_at(toks, i) {
            times.push(time);
            i = next;
            continue;
        }
        if named && toks[i].is_word() {
            let word = fold(toks[i].text);
            let before = word_before(toks, i);
            let noon = (listed(NOON_WORDS, &word) && before.as_deref() != Some("apres"))
                || (word == "dia" && before.as_deref() == Some("meio"));
            let midnight = listed(MIDNIGHT_WORDS, &word)
                || (word == "noite" && before.as_deref() == Some("meia"));
            if noon || midnight {
                times.push(ClockTime {
                    hour: if noon { 12 } else { 0 },
                    minute: 0,
                    pm: Some(noon),
                    minute_given: false,
                    span: toks[i].start..toks[i].end(),
                });
            }
        }
        i += 1;
    }
    times
}

// ------------------------------------------------------------------------------------------
// Days
// ------------------------------------------------------------------------------------------

/// What a day word refers to; compared across languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum When {
    /// 1 = Monday.
    Weekday(u8),
    /// 1 = January.
    Month(u8),
    Today,
    Tomorrow,
    Tonight,
    Yesterday,
    DayAfterTomorrow,
    /// Not checked; "mañana" and "morgen" also mean morning.
    Morning,
    /// Not checked; supports "tonight".
    Evening,
}

impl When {
    fn checked(self) -> bool {
        !matches!(self, When::Morning | When::Evening)
    }
}

use When::{
    DayAfterTomorrow, Evening, Month, Morning, Today, Tomorrow, Tonight, Weekday, Yesterday,
};

/// Weekday names, Monday first, in English, Spanish, German, French, Italian and
/// Portuguese.
const WEEKDAYS: [&str; 7] = [
    "monday lunes montag lundi lunedì segunda",
    "tuesday martes dienstag mardi martedì terça",
    "wednesday miércoles mittwoch mercredi mercoledì quarta",
    "thursday jueves donnerstag jeudi giovedì quinta",
    "friday viernes freitag vendredi venerdì sexta",
    "saturday sábado samstag sonnabend samedi sabato",
    "sunday domingo sonntag dimanche domenica",
];

/// Month names, January first, in the same languages.
const MONTHS: [&str; 12] = [
    "january enero januar jänner janvier gennaio janeiro",
    "february febrero februar février febbraio fevereiro",
    "march marzo märz mars março",
    "april abril avril aprile",
    "may mayo mai maggio maio",
    "june junio juni juin giugno junho",
    "july julio juli juillet luglio julho",
    "august agosto août",
    "september septiembre setiembre septembre settembre setembro",
    "october octubre oktober octobre ottobre outubro",
    "november noviembre novembre novembro",
    "december diciembre dezember décembre dicembre dezembro",
];

/// Relative days. A word may mean two things: "mañana" and "morgen" are tomorrow and
/// morning.
const RELATIVE_DAYS: &[(When, &str)] = &[
    (Today, "today hoy heute aujourd'hui oggi hoje"),
    (Tomorrow, "tomorrow mañana morgen demain domani amanhã"),
    (
        Morning,
        "mañana morgen morning matin mattina mattino manhã vormittag morgens",
    ),
    (Tonight, "tonight tonite stasera"),
    (Yesterday, "yesterday ayer gestern ieri ontem"),
    (DayAfterTomorrow, "übermorgen dopodomani"),
    (
        Evening,
        "evening night noche abend abends soir soirée sera noite",
    ),
];

/// Matched only with their accent: "marco" is a name, "março" a month.
const EXACT_DAY_WORDS: &[&str] = &["março"];

/// Month names that are also common words ("you may", "to march", Italian "mai" = never):
/// months only when capitalized mid-sentence or next to a number.
const AMBIGUOUS_DAY_WORDS: &[&str] = &["may", "march", "mai"];

/// Portuguese weekdays are ordinals ("segunda" = second) unless "-feira" follows or a
/// preposition precedes.
const FEIRA_WEEKDAYS: &[&str] = &["segunda", "terca", "quarta", "quinta", "sexta"];
const FEIRA_LEADS: &[&str] = &["na", "nesta", "esta", "proxima", "ate"];

/// Abbreviations, when capitalized and followed by a dot or next to a number ("Fri 3pm").
const DAY_ABBREVIATIONS: &[(When, &str)] = &[
    (Weekday(1), "mon"),
    (Weekday(2), "tue tues"),
    (Weekday(3), "wed"),
    (Weekday(4), "thu thur thurs"),
    (Weekday(5), "fri"),
    (Weekday(6), "sat"),
    (Weekday(7), "sun"),
    (Month(1), "jan"),
    (Month(2), "feb"),
    (Month(3), "mar"),
    (Month(4), "apr"),
    (Month(6), "jun"),
    (Month(7), "jul"),
    (Month(8), "aug"),
    (Month(9), "sep sept"),
    (Month(10), "oct"),
    (Month(11), "nov"),
    (Month(12), "dec"),
];

struct DayTables {
    exact: HashMap<&'static str, Vec<When>>,
    folded: HashMap<String, Vec<When>>,
}

fn day_tables() -> &'static DayTables {
    static TABLES: OnceLock<DayTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut tables = DayTables {
            exact: HashMap::new(),
            folded: HashMap::new(),
        };
        let weekdays = (1..).map(When::Weekday).zip(WEEKDAYS);
        let months = (1..).map(When::Month).zip(MONTHS);
        let relative = RELATIVE_DAYS.iter().copied();
        for (when, words) in weekdays.chain(months).chain(relative) {
            for word in words.split_whitespace() {
                tables.exact.entry(word).or_default().push(when);
                if !EXACT_DAY_WORDS.contains(&word) {
                    tables.folded.entry(fold(word)).or_default().push(when);
                }
            }
        }
        tables
    })
}

/// What a word means as a day, ignoring context ("fridays" and "montags" too).
fn day_word(word: &str) -> Vec<When> {
    let tables = day_tables();
    let lookup = |w: &str| {
        tables
            .exact
            .get(w)
            .or_else(|| tables.folded.get(&fold(w)))
            .cloned()
    };
    let lower = word.to_lowercase();
    lookup(&lower)
        .or_else(|| {
            let singular = lower.strip_suffix('s')?;
            (singular.chars().count() >= 5)
                .then(|| lookup(singular))
                .flatten()
        })
        .unwrap_or_default()
}

fn day_abbreviation(word: &str) -> Option<When> {
    let lower = fold(word);
    DAY_ABBREVIATIONS
        .iter()
        .find(|(_, abbreviations)| listed(abbreviations, &lower))
        .map(|&(when, _)| when)
}

fn next_to_digits(toks: &[Tok], i: usize) -> bool {
    let skip = |t: &&Tok| t.kind == TokKind::Space || t.is(".") || t.is(",");
    let after = toks[i + 1..].iter().find(|t| !skip(t));
    let before = toks[..i].iter().rev().find(|t| !skip(t));
    after.is_some_and(|t| t.kind == TokKind::Digits)
        || before.is_some_and(|t| t.kind == TokKind::Digits)
}

/// Day words in context: token index and meanings.
fn day_mentions(toks: &[Tok], firsts: &[bool]) -> Vec<(usize, Vec<When>)> {
    let mut found = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        if !tok.is_word() {
            continue;
        }
        let key = fold(tok.text);
        let mut whens = day_word(tok.text);
        if AMBIGUOUS_DAY_WORDS.contains(&key.as_str())
            && !(starts_upper(tok.text) && !firsts[i] || next_to_digits(toks, i))
        {
            whens.clear();
        }
        if FEIRA_WEEKDAYS.contains(&key.as_str()) {
            let feira = next_in_number(toks, i).is_some_and(|k| fold(toks[k].text) == "feira");
            let lead = word_before(toks, i).is_some_and(|w| FEIRA_LEADS.contains(&w.as_str()));
            if !(feira || lead) {
                whens.clear();
            }
        }
        if whens.is_empty() && starts_upper(tok.text) {
            let dotted = toks.get(i + 1).is_some_and(|t| t.is("."));
            if dotted || next_to_digits(toks, i) {
                whens.extend(day_abbreviation(tok.text));
            }
        }
        if !whens.is_empty() {
            found.push((i, whens));
        }
    }
    found
}

// ------------------------------------------------------------------------------------------
// Names
// ------------------------------------------------------------------------------------------

/// Capitalized words that are not names: pronouns, titles (the name after them is
/// checked), common acronyms and language names.
const NOT_NAMES: &str = "\
    i i'm i'll i've i'd sie ihnen ihr ihre ihren ihrem ihrer du dich dir dein deine usted \
    ustedes ud uds vous lei voi suo sua voce voces mr mrs ms miss dr prof sir madam herr \
    herrn frau monsieur madame mme mlle senor senora senorita sr sra srta signor signore \
    signora sig senhor senhora dona doctor doktor doutor ok okay am pm id asap fyi eta tv \
    it hr pin sms url pdf faq usa us uk eu vat iva tva mwst ceo gmbh inc ltd llc st ave rd \
    nr tel est edt pst pdt cst cdt gmt utc cet cest english spanish german french italian \
    portuguese";

const GERMAN_TITLES: &[&str] = &["herr", "herrn", "frau", "dr", "prof", "doktor", "professor"];

/// Endings of German nouns that are almost never names.
const GERMAN_NOUN_ENDINGS: &str = "\
    ung ungen heit keit schaft tion tionen tat nis chen lein ment mus ling tum";

const GERMAN_HINTS: &str = "\
    der das und ist nicht ich bitte wegen mit fur auf den dem des eine einen einem sich \
    haben hat wir uns oder aber dass noch schon gerne zuruck zuruckrufen ruckruf anrufen \
    ihnen mich mir wird werden kann uhr herr herrn frau bei zum zur vom sie";

const OTHER_LANGUAGE_HINTS: &str = "\
    the and is please you to of for with call this that will can my your on it el los las \
    que por usted con para una del le les et est vous pour avec une je nous il che per \
    sono di os com voce nao";

/// (German hint words, hint words of the other languages).
fn language_hints(toks: &[Tok]) -> (usize, usize) {
    let mut german = 0;
    let mut other = 0;
    for tok in toks.iter().filter(|t| t.is_word()) {
        let word = fold(tok.text);
        german += usize::from(listed(GERMAN_HINTS, &word));
        other += usize::from(listed(OTHER_LANGUAGE_HINTS, &word));
    }
    (german, other)
}

fn strip_possessive(word: &str) -> &str {
    ["'s", "’s", "ʼs"]
        .iter()
        .find_map(|s| word.strip_suffix(s))
        .unwrap_or(word)
}

/// In German every noun is capitalized: a capitalized word is taken for a name only after
/// a title, after "von"/"an", or right after another capitalized word mid-sentence.
fn german_name_like(toks: &[Tok], firsts: &[bool], i: usize) -> bool {
    let Some(p) = (0..i)
        .rev()
        .find(|&k| toks[k].kind != TokKind::Space && !toks[k].is("."))
        .filter(|&k| toks[k].is_word())
    else {
        return false;
    };
    let before = toks[p].text;
    if GERMAN_TITLES.contains(&fold(before).as_str()) {
        return true;
    }
    let key = fold(toks[i].text);
    if GERMAN_NOUN_ENDINGS
        .split_whitespace()
        .any(|ending| key.ends_with(ending))
    {
        return false;
    }
    matches!(before, "von" | "an") || (starts_upper(before) && !firsts[p])
}

// ------------------------------------------------------------------------------------------
// Fact check
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactKind {
    /// A phone number, amount, time or any other number.
    Number,
    Name,
    /// A weekday, month or relative day ("tomorrow").
    Date,
}

/// A fact in model output that the transcript does not support.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fact {
    pub kind: FactKind,
    /// Numbers as digits ("5550143"), times as written ("3 pm"), names and days as written.
    pub text: String,
}

fn fact(kind: FactKind, text: &str) -> Fact {
    Fact {
        kind,
        text: text.to_string(),
    }
}

fn dedup(facts: Vec<Fact>) -> Vec<Fact> {
    let mut seen = HashSet::new();
    facts
        .into_iter()
        .filter(|f| seen.insert((f.kind, fold(&f.text))))
        .collect()
}

/// The text with the given spans blanked out (byte offsets stay valid).
fn mask(text: &str, spans: impl Iterator<Item = Range<usize>>) -> String {
    let mut masked = text.to_string();
    for span in spans {
        masked.replace_range(span.clone(), &"|".repeat(span.len()));
    }
    masked
}

/// Numbers that only number the lines of a list ("1. Call Ana", "2) Send the form").
fn list_markers(toks: &[Tok]) -> Vec<usize> {
    (0..toks.len())
        .filter(|&k| {
            let line_start = prev_non_space(toks, k).is_none()
                || (toks[k - 1].kind == TokKind::Space && toks[k - 1].text.contains('\n'));
            toks[k].kind == TokKind::Digits
                && line_start
                && toks.get(k + 1).is_some_and(|t| t.is(".") || t.is(")"))
                && toks.get(k + 2).is_some_and(|t| t.kind == TokKind::Space)
        })
        .collect()
}

/// What a transcript says, prepared for checking model output against it.
#[derive(Debug, Clone)]
pub struct FactCheck {
    /// All digit runs of the transcript, concatenated in order: Whisper may split one
    /// phone number across segments.
    digits: String,
    /// Digit runs outside the times found, for times said without a time word ("three
    /// thirty works").
    untimed_runs: Vec<String>,
    times: Vec<ClockTime>,
    days: HashSet<When>,
    /// Folded words, without possessive "'s", plus adjacent pairs run together ("Mc
    /// Donald" → "mcdonald").
    words: HashSet<String>,
    german: bool,
}

impl FactCheck {
    pub fn new(transcript: &str) -> Self {
        let normalized = normalize(transcript, true);
        let toks = tokenize(&normalized);
        let firsts = sentence_starts(&toks);
        let digits = run_spans(&normalized)
            .into_iter()
            .map(|run| run.digits)
            .collect();
        let times = scan_times(&toks, true);
        let untimed_runs = run_spans(&mask(&normalized, times.iter().map(|t| t.span.clone())))
            .into_iter()
            .map(|run| run.digits)
            .collect();
        let days = day_mentions(&toks, &firsts)
            .into_iter()
            .flat_map(|(_, whens)| whens)
            .collect();
        let original = tokenize(transcript);
        let mut words = HashSet::new();
        for (i, tok) in original.iter().enumerate() {
            if !tok.is_word() {
                continue;
            }
            let word = fold(strip_possessive(tok.text));
            let joined = i >= 2
                && original[i - 2].is_word()
                && (original[i - 1].text == " " || is_hyphen(original[i - 1].text));
            if joined {
                words.insert(format!("{}{word}", fold(original[i - 2].text)));
            }
            words.insert(fold(tok.text));
            words.insert(word);
        }
        let (german, other) = language_hints(&original);
        FactCheck {
            digits,
            untimed_runs,
            times,
            days,
            words,
            german: german >= 2 && german > other,
        }
    }

    /// The numbers, times, days and names in `candidate` (a task, a summary sentence) that
    /// the transcript does not contain, in order of appearance.
    pub fn unsupported(&self, candidate: &str) -> Vec<Fact> {
        self.check(candidate, false)
    }

    /// Whether every fact in `candidate` comes from the transcript.
    pub fn supports(&self, candidate: &str) -> bool {
        self.unsupported(candidate).is_empty()
    }

    /// Like [`FactCheck::unsupported`] for a field that holds a name (`Task::who`): every
    /// capitalized word counts, the first one too.
    pub fn unsupported_in_name(&self, name: &str) -> Vec<Fact> {
        self.check(name, true)
    }

    /// The unsupported facts of a task: its text, due date and phone, and its `who` as a
    /// name.
    pub fn unsupported_in_task(&self, task: &Task) -> Vec<Fact> {
        let mut facts = self.unsupported(&task.text);
        for field in [&task.phone, &task.due].into_iter().flatten() {
            facts.extend(self.unsupported(field));
        }
        if let Some(who) = &task.who {
            facts.extend(self.unsupported_in_name(who));
        }
        dedup(facts)
    }

    /// The unsupported facts of a call summary: recap, next steps and paragraph.
    pub fn unsupported_in_summary(&self, summary: &CallSummary) -> Vec<Fact> {
        let mut facts = self.unsupported(&summary.recap);
        for text in summary.next_steps.iter().chain([&summary.summary]) {
            facts.extend(self.unsupported(text));
        }
        dedup(facts)
    }

    fn check(&self, candidate: &str, name_field: bool) -> Vec<Fact> {
        let normalized = normalize(candidate, false);
        let toks = tokenize(&normalized);
        let firsts = sentence_starts(&toks);
        let mut found: Vec<(usize, Fact)> = Vec::new();

        // Times first; their digits and list numbers are left out of the plain number check.
        let times = scan_times(&toks, false);
        for time in &times {
            if !self.time_supported(time) {
                let text = &normalized[time.span.clone()];
                found.push((time.span.start, fact(FactKind::Number, text)));
            }
        }
        let markers = list_markers(&toks)
            .into_iter()
            .map(|k| toks[k].start..toks[k].end());
        let masked = mask(
            &normalized,
            times.iter().map(|t| t.span.clone()).chain(markers),
        );
        for run in run_spans(&masked) {
            if !self.digits.contains(&run.digits) {
                found.push((run.span.start, fact(FactKind::Number, &run.digits)));
            }
        }

        let days = day_mentions(&toks, &firsts);
        for (i, whens) in &days {
            if whens.iter().any(|w| w.checked()) && !self.day_supported(whens) {
                found.push((toks[*i].start, fact(FactKind::Date, toks[*i].text)));
            }
        }

        let (german, other) = language_hints(&toks);
        let german = !name_field
            && if german + other >= 2 {
                german > other
            } else {
                self.german
            };
        for (i, tok) in toks.iter().enumerate() {
            if !tok.is_word() || !starts_upper(tok.text) || (firsts[i] && !name_field) {
                continue;
            }
            let name = strip_possessive(tok.text);
            let key = fold(name);
            let is_day = !day_word(name).is_empty() || day_abbreviation(name).is_some();
            if name.chars().count() < 2 || listed(NOT_NAMES, &key) || is_day {
                continue;
            }
            if german && !german_name_like(&toks, &firsts, i) {
                continue;
            }
            if !self.knows_name(&key) {
                found.push((tok.start, fact(FactKind::Name, name)));
            }
        }

        found.sort_by_key(|(at, _)| *at);
        dedup(found.into_iter().map(|(_, f)| f).collect())
    }

    /// A time is supported by an equal time in the transcript; if the transcript names
    /// other times at that hour only, it is not; with no time at that hour, its digits
    /// must be a whole number of the transcript outside its times ("three thirty" said
    /// without "at"), so "5 pm" is not found in "15 Uhr" and "10:00" not in "halb 10".
    fn time_supported(&self, time: &ClockTime) -> bool {
        let same_hour: Vec<&ClockTime> = self
            .times
            .iter()
            .filter(|t| t.hour % 12 == time.hour % 12)
            .collect();
        if !same_hour.is_empty() {
            return same_hour.iter().any(|t| t.same_as(time));
        }
        time.digit_forms()
            .iter()
            .any(|d| self.untimed_runs.contains(d))
    }

    fn day_supported(&self, whens: &[When]) -> bool {
        whens
            .iter()
            .any(|w| self.days.contains(w) || (*w == Tonight && self.days.contains(&Evening)))
    }

    /// Whether the transcript has the name: same letters ignoring case and accents, or a
    /// plural, or (for names of five letters or more) one edit apart, as Whisper spells
    /// names it does not know.
    fn knows_name(&self, key: &str) -> bool {
        let mut forms = vec![key.to_string()];
        for suffix in ["es", "s"] {
            if let Some(stem) = key.strip_suffix(suffix).filter(|s| s.chars().count() >= 2) {
                forms.push(stem.to_string());
            }
        }
        let known =
            |form: &String| self.words.contains(form) || self.words.contains(&format!("{form}s"));
        if forms.iter().any(known) {
            return true;
        }
        if key.chars().count() < 5 {
            return false;
        }
        let key: Vec<char> = key.chars().collect();
        self.words.iter().any(|word| {
            let word: Vec<char> = word.chars().collect();
            word.len().abs_diff(key.len()) <= 1 && edit_distance(&key, &word) <= 1
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        normalize_numbers(text)
    }

    fn kinds(facts: &[Fact]) -> Vec<(FactKind, &str)> {
        facts.iter().map(|f| (f.kind, f.text.as_str())).collect()
    }

    #[test]
    fn tables_have_each_word_once_and_folded_spellings_agree() {
        let mut seen = HashMap::new();
        for word in NUMBER_WORDS.iter().flat_map(|l| l.iter()) {
            assert!(
                seen.insert(word.word, word).is_none(),
                "{} twice",
                word.word
            );
        }
        let mut folded: HashMap<String, &NumberWord> = HashMap::new();
        for word in NUMBER_WORDS.iter().flat_map(|l| l.iter()) {
            if let Some(other) = folded.insert(fold(word.word), word) {
                assert_eq!(
                    (other.value, other.kind),
                    (word.value, word.kind),
                    "{} vs {}",
                    other.word,
                    word.word
                );
            }
        }
    }

    #[test]
    fn english_numbers() {
        assert_eq!(
            norm("call me at five five five, zero one four two"),
            "call me at 5 5 5, 0 1 4 2"
        );
        assert_eq!(norm("twenty three"), "23");
        assert_eq!(norm("twenty-three"), "23");
        assert_eq!(norm("two hundred fifty dollars"), "250 dollars");
        assert_eq!(norm("two hundred and fifty dollars"), "250 dollars");
        assert_eq!(norm("a hundred bucks"), "100 bucks");
        assert_eq!(norm("a thousand and one nights"), "1001 nights");
        assert_eq!(norm("nineteen eighty four"), "19 84");
        assert_eq!(norm("twenty five hundred"), "2500");
        assert_eq!(norm("five thousand two hundred"), "5200");
        assert_eq!(norm("eight hundred five"), "805");
        assert_eq!(
            norm("one eight hundred five five five one two one two"),
            "1 800 5 5 5 1 2 1 2"
        );
        assert_eq!(norm("2 million"), "2000000");
        assert_eq!(norm("5 thousand dollars"), "5000 dollars");
        assert_eq!(norm("double five"), "55");
        assert_eq!(norm("triple seven"), "777");
        assert_eq!(norm("double oh seven"), "00 7");
        assert_eq!(norm("please double check"), "please double check");
        assert_eq!(norm("fifty cents"), "50 cents");
    }

    #[test]
    fn oh_is_zero_only_among_digits() {
        assert_eq!(norm("five oh five"), "5 0 5");
        assert_eq!(norm("room five oh."), "room 5 0.");
        assert_eq!(norm("Oh, hi, it's Ana."), "Oh, hi, it's Ana.");
        assert_eq!(norm("at two oh my god"), "at 2 oh my god");
        assert_eq!(norm("Oh, five people came"), "Oh, 5 people came");
    }

    #[test]
    fn articles_and_pronouns_are_not_one() {
        for text in [
            "I have a question",
            "an hour ago",
            "No one answered.",
            "the one I sent you",
            "Ich habe eine Frage und einen Termin",
            "Tengo una pregunta y un problema",
            "J'ai une question, un problème",
            "Ho una domanda",
            "Tenho uma pergunta e um problema",
            "Ja, um drei Uhr",
        ] {
            assert!(!norm(text).contains('1'), "{text} → {}", norm(text));
        }
        assert_eq!(norm("one more thing"), "1 more thing");
    }

    #[test]
    fn spanish_numbers() {
        assert_eq!(
            norm("cinco cinco cinco, cero uno cuatro dos"),
            "5 5 5, 0 1 4 2"
        );
        assert_eq!(norm("veintitrés"), "23");
        assert_eq!(norm("veintitres"), "23");
        assert_eq!(norm("veintiún días"), "21 días");
        assert_eq!(norm("treinta y cinco"), "35");
        assert_eq!(norm("treinta y un días"), "31 días");
        assert_eq!(norm("doscientos cincuenta euros"), "250 euros");
        assert_eq!(norm("mil novecientos noventa"), "1990");
        assert_eq!(norm("ciento veinte"), "120");
        assert_eq!(norm("cien mil"), "100000");
        assert_eq!(norm("un millón de pesos"), "1000000 de pesos");
        assert_eq!(norm("a las once"), "a las 11");
        assert_eq!(norm("a la una"), "a la 1");
        assert_eq!(norm("once you get this"), "once you get this");
        assert_eq!(norm("uno, dos, tres"), "1, 2, 3");
        assert_eq!(norm("cinco o seis"), "5 o 6");
    }

    #[test]
    fn german_numbers() {
        assert_eq!(norm("dreiundzwanzig"), "23");
        assert_eq!(norm("einundzwanzig"), "21");
        assert_eq!(norm("drei und zwanzig"), "23");
        assert_eq!(norm("zwei und drei"), "2 und 3");
        assert_eq!(norm("zweihundertfünfzig Euro"), "250 Euro");
        assert_eq!(norm("zweihundertdreiundzwanzig"), "223");
        assert_eq!(norm("neunzehnhundertachtzig"), "1980");
        assert_eq!(norm("eintausend"), "1000");
        assert_eq!(norm("eine Million"), "1000000");
        assert_eq!(norm("dreißig"), "30");
        assert_eq!(norm("dreissig"), "30");
        assert_eq!(norm("fünf fünf fünf null eins vier zwei"), "5 5 5 0 1 4 2");
        assert_eq!(norm("zwo acht"), "2 8");
        assert_eq!(norm("ein Termin"), "ein Termin");
    }

    #[test]
    fn french_numbers() {
        assert_eq!(norm("soixante-dix"), "70");
        assert_eq!(norm("soixante et onze"), "71");
        assert_eq!(norm("soixante-dix-sept"), "77");
        assert_eq!(norm("quatre-vingts"), "80");
        assert_eq!(norm("quatre-vingt-un"), "81");
        assert_eq!(norm("quatre-vingt-dix"), "90");
        assert_eq!(norm("quatre vingt dix neuf"), "99");
        assert_eq!(norm("vingt et un"), "21");
        assert_eq!(norm("vingt-trois"), "23");
        assert_eq!(norm("dix-sept"), "17");
        assert_eq!(norm("septante"), "70");
        assert_eq!(norm("nonante-neuf"), "99");
        assert_eq!(norm("deux cents"), "200");
        assert_eq!(norm("deux cent cinquante euros"), "250 euros");
        assert_eq!(norm("cent vingt"), "120");
        assert_eq!(norm("cent euros"), "100 euros");
        assert_eq!(norm("mille deux cents"), "1200");
        assert_eq!(
            norm("zéro six, douze, trente-quatre, cinquante-six, soixante-dix-huit"),
            "0 6, 12, 34, 56, 78"
        );
        assert_eq!(norm("zéro un, quarante-deux"), "0 1, 42");
        assert_eq!(norm("très bien, merci"), "très bien, merci");
        assert_eq!(norm("20 per cent"), "20 per cent");
    }

    #[test]
    fn italian_and_portuguese_numbers() {
        assert_eq!(norm("ventitré"), "23");
        assert_eq!(norm("ventotto"), "28");
        assert_eq!(norm("trentacinque"), "35");
        assert_eq!(norm("duemila"), "2000");
        assert_eq!(norm("centoventi"), "120");
        assert_eq!(norm("tre tre due uno"), "3 3 2 1");
        assert_eq!(norm("Sei tu?"), "Sei tu?");
        assert_eq!(norm("alle sei"), "alle 6");
        assert_eq!(norm("Otto ha chiamato"), "Otto ha chiamato");
        assert_eq!(norm("vinte e três"), "23");
        assert_eq!(norm("cento e vinte"), "120");
        assert_eq!(norm("dois mil e vinte e quatro"), "2024");
        assert_eq!(norm("mil e quinhentos"), "1500");
        assert_eq!(norm("nove um um"), "9 1 1");
        assert_eq!(norm("nove meia dois"), "9 6 2");
        assert_eq!(norm("duas e meia"), "2 e meia");
    }

    #[test]
    fn english_words_from_other_languages_stay() {
        assert_eq!(
            norm("Payment of 250 due Friday"),
            "Payment of 250 due Friday"
        );
        assert_eq!(norm("The payment is due."), "The payment is due.");
        assert_eq!(
            norm("Call 555 0142 once you're free"),
            "Call 555 0142 once you're free"
        );
        assert_eq!(norm("See you on Sept 5"), "See you on Sept 5");
    }

    #[test]
    fn digit_runs_join_phone_punctuation() {
        assert_eq!(digit_runs("(555) 014-2"), ["5550142"]);
        assert_eq!(digit_runs("5 5 5 0 1 4 2"), ["5550142"]);
        assert_eq!(
            digit_runs("call five five five, zero one four two at 3 pm"),
            ["5550142", "3"]
        );
        assert_eq!(digit_runs("It costs $250.00, not 10.000"), ["250", "10000"]);
        assert_eq!(digit_runs("3:30"), ["330"]);
        assert_eq!(digit_runs("no numbers"), Vec::<String>::new());
        assert_eq!(
            join_digit_runs("call 555-0142 or 12"),
            "call  5550142  or 12"
        );
    }

    #[test]
    fn phone_numbers_in_four_languages() {
        let cases = [
            (
                "Hi, this is John. Call me back at five five five, zero one four two.",
                "Call John back at 555-0142.",
                "Call John back at 555-0143.",
            ),
            (
                "Hola, soy María. Mi número es cinco cinco cinco, cero uno cuatro dos.",
                "Llamar a María al 555 0142.",
                "Llamar a María al 555 0124.",
            ),
            (
                "Hallo, hier ist Thomas Müller. Meine Nummer ist fünf fünf fünf null eins vier zwei.",
                "Herrn Müller unter 555-0142 zurückrufen.",
                "Herrn Müller unter 555-0140 zurückrufen.",
            ),
            (
                "Bonjour, c'est Julie, rappelez-moi au zéro six, douze, trente-quatre, cinquante-six, soixante-dix-huit.",
                "Rappeler Julie au 06 12 34 56 78.",
                "Rappeler Julie au 06 12 34 56 79.",
            ),
        ];
        for (transcript, good, changed) in cases {
            let check = FactCheck::new(transcript);
            assert_eq!(check.unsupported(good), [], "{good}");
            let facts = check.unsupported(changed);
            assert_eq!(facts.len(), 1, "{changed}: {facts:?}");
            assert_eq!(facts[0].kind, FactKind::Number);
        }
    }

    #[test]
    fn digits_in_the_transcript_words_in_the_task() {
        let check = FactCheck::new("Call me at 555-0142, thanks.");
        assert!(check.supports("Call back at five five five oh one four two."));
        assert!(!check.supports("Call back at five five five oh one four three."));
    }

    #[test]
    fn invented_phone_number_is_caught() {
        let check = FactCheck::new("Hi, it's Ana about the invoice, please call me back.");
        assert_eq!(
            kinds(&check.unsupported("Call Ana back at 555-0199 about the invoice.")),
            [(FactKind::Number, "5550199")]
        );
        assert_eq!(
            kinds(&check.unsupported("Call Ana back at 555 0199.")),
            [(FactKind::Number, "5550199")]
        );
    }

    #[test]
    fn phone_number_split_across_segments() {
        let transcript = crate::Transcript::from_segments(vec![
            segment(0.0, "My number is five five five."),
            segment(2.0, "Zero one four two."),
        ]);
        let check = FactCheck::new(&transcript.text);
        assert!(check.supports("Call back at (555) 014-2."));
    }

    fn segment(start: f64, text: &str) -> crate::Segment {
        crate::Segment {
            start_s: start,
            end_s: start + 1.0,
            speaker: None,
            text: text.into(),
            words: vec![],
        }
    }

    #[test]
    fn amounts() {
        let check = FactCheck::new("The repair will be two hundred and fifty dollars.");
        assert!(check.supports("Repair costs $250."));
        assert!(check.supports("Repair costs $250.00."));
        assert_eq!(
            kinds(&check.unsupported("Repair costs $350.")),
            [(FactKind::Number, "350")]
        );
        let check = FactCheck::new("Die Reparatur kostet zweihundertfünfzig Euro.");
        assert!(check.supports("Reparatur: 250 €"));
        let check = FactCheck::new("Son doscientos cincuenta euros.");
        assert!(check.supports("Pagar 250 euros."));
        let check = FactCheck::new("Ça fait deux cent cinquante euros.");
        assert!(check.supports("Payer 250 €."));
        assert!(!check.supports("Payer 205 €."));
    }

    #[test]
    fn times_in_twelve_and_twenty_four_hours() {
        let check = FactCheck::new("Can you come in at three p.m. on Friday?");
        assert!(check.supports("Come in Friday at 15:00."));
        assert!(check.supports("Come in Friday at 3 PM."));
        assert!(check.supports("Come in Friday at 3."));
        assert_eq!(
            kinds(&check.unsupported("Come in Friday at 16:00.")),
            [(FactKind::Number, "16:00")]
        );
        assert!(!check.supports("Come in Friday at 3 am."));

        let check = FactCheck::new("Meet me at three thirty.");
        assert!(check.supports("Meeting at 3:30."));
        assert!(!check.supports("Meeting at 4:30."));
        assert!(!check.supports("Meeting at 3 pm."));

        let check = FactCheck::new("We could do three thirty tomorrow.");
        assert!(check.supports("Meeting tomorrow at 3:30."));
        assert!(check.supports("Meeting tomorrow at 15:30."));
    }

    #[test]
    fn times_in_other_languages() {
        let check = FactCheck::new("Rufen Sie mich bitte um fünfzehn Uhr an.");
        assert!(check.supports("Call back at 3 PM."));
        assert!(check.supports("Rückruf um 15 Uhr."));
        assert!(!check.supports("Call back at 5 PM."));

        let check = FactCheck::new("Rappelez-moi à quinze heures trente.");
        assert!(check.supports("Rappeler à 15h30."));
        assert!(check.supports("Call back at 3:30 pm."));

        let check = FactCheck::new("Llámeme a las tres y media de la tarde.");
        assert!(check.supports("Llamar a las 15:30."));
        assert!(!check.supports("Llamar a las 3:30 am."));

        let check = FactCheck::new("Komm um halb vier.");
        assert!(check.supports("Treffen um 15:30."));
        assert!(!check.supports("Treffen um 4 Uhr."));
    }

    #[test]
    fn weekdays_and_relative_days() {
        let check = FactCheck::new("I'll be in on Friday, call me tomorrow.");
        assert!(check.supports("Call back tomorrow; visit on Friday."));
        assert_eq!(
            kinds(&check.unsupported("Visit on Thursday.")),
            [(FactKind::Date, "Thursday")]
        );
        assert_eq!(
            kinds(&check.unsupported("Call back today.")),
            [(FactKind::Date, "today")]
        );

        let check = FactCheck::new("Llámame mañana, estoy libre el viernes.");
        assert!(check.supports("Call back tomorrow morning, free on Friday."));
        assert!(check.supports("Llamar mañana."));
        assert!(!check.supports("Llamar el lunes."));

        let check = FactCheck::new("Call me tomorrow morning.");
        assert!(check.supports("Llamar mañana."));

        let check = FactCheck::new("Rufen Sie mich am Montag an.");
        assert!(check.supports("Rückruf am Montag."));
        assert!(!check.supports("Rückruf am Dienstag."));
        let check = FactCheck::new("Rappelez-moi demain ou mercredi.");
        assert!(check.supports("Rappeler demain ou mercredi."));
        assert!(!check.supports("Rappeler jeudi."));
        assert!(check.supports("Call back tomorrow or on Wednesday."));
    }

    #[test]
    fn may_the_verb_is_not_a_month() {
        let check = FactCheck::new("Hi, call me back.");
        assert!(check.supports("The caller may call back."));
        assert!(check.supports("May I suggest calling back."));
        assert!(!check.supports("Call back on May 5."));
        let check = FactCheck::new("Non richiamare mai.");
        assert!(check.supports("Non richiamare mai."));
    }

    #[test]
    fn names() {
        let check = FactCheck::new("Hi, this is John Smith from Acme, call me back.");
        assert!(check.supports("Call John Smith back."));
        assert!(check.supports("Call back John from Acme."));
        assert!(check.supports("Return John's call."));
        assert_eq!(
            kinds(&check.unsupported("Call Peter Smith back.")),
            [(FactKind::Name, "Peter")]
        );
        assert_eq!(
            kinds(&check.unsupported_in_name("Peter")),
            [(FactKind::Name, "Peter")]
        );
        assert!(check.unsupported_in_name("John Smith").is_empty());
    }

    #[test]
    fn names_with_accents_and_whisper_spellings() {
        let check = FactCheck::new("Hola, soy Jose Garcia, llámame.");
        assert!(check.supports("Llamar a José García."));
        let check = FactCheck::new("This is Katherine Mueller.");
        assert!(check.supports("Call Catherine Müller."));
        assert!(!check.supports("Call Kathy."));
        let check = FactCheck::new("It's Jean Mc Donald.");
        assert!(check.supports("Call Jean McDonald."));
    }

    #[test]
    fn german_nouns_are_not_names() {
        let check = FactCheck::new(
            "Hallo, hier ist Thomas Müller, bitte rufen Sie mich wegen der Rechnung zurück.",
        );
        assert!(check.supports("Rückruf an Herrn Müller wegen der Rechnung."));
        assert!(check.supports("Bitte den Kunden wegen einer offenen Frage zurückrufen."));
        assert_eq!(
            kinds(&check.unsupported("Rückruf an Herrn Schmidt wegen der Rechnung.")),
            [(FactKind::Name, "Schmidt")]
        );
        assert_eq!(
            kinds(&check.unsupported("Anruf von Anna wegen der Rechnung.")),
            [(FactKind::Name, "Anna")]
        );
    }

    #[test]
    fn ordinary_sentences_have_no_facts() {
        let check = FactCheck::new("Hi, it's me. Give me a call when you can. Bye.");
        for text in [
            "Please call back.",
            "Thanks for calling.",
            "Call back when you can.",
            "I'll call you back, OK?",
            "No one answered; try again.",
            "The caller asked for a call back as soon as possible.",
            "Por favor, devolver la llamada.",
            "Bitte zurückrufen.",
            "Rappeler dès que possible.",
        ] {
            assert_eq!(check.unsupported(text), [], "{text}");
        }
    }

    #[test]
    fn list_numbers_are_not_facts() {
        let check = FactCheck::new("Hi, it's Ana, call me back about the invoice.");
        assert!(check.supports("1. Call Ana back.\n2) Ask about the invoice."));
        assert!(!check.supports("Call Ana back. 2 invoices are open."));
    }

    #[test]
    fn spanish_articles_are_not_numbers() {
        let check = FactCheck::new("Tengo una pregunta sobre la factura.");
        assert!(check.supports("Tiene una pregunta sobre un pedido."));
        assert!(!check.supports("Tiene 1 pregunta."));
    }

    #[test]
    fn ordinals_in_the_transcript_support_dates() {
        let check = FactCheck::new("The appointment is on the twenty-third of May.");
        assert!(check.supports("Appointment on May 23."));
        let check = FactCheck::new("Der Termin ist am dreiundzwanzigsten Mai.");
        assert!(check.supports("Termin am 23. Mai."));
        assert!(!check.supports("Termin am 24. Mai."));
    }

    #[test]
    fn tasks_and_summaries() {
        let check = FactCheck::new(
            "Hi, it's Ana Lopez. Call me at five five five zero one four two on Monday.",
        );
        let task = Task {
            text: "Call Ana back".into(),
            who: Some("Ana Lopez".into()),
            phone: Some("555-0142".into()),
            due: Some("Monday".into()),
        };
        assert_eq!(check.unsupported_in_task(&task), []);
        let task = Task {
            who: Some("Maria Lopez".into()),
            phone: Some("555-0143".into()),
            due: Some("Tuesday".into()),
            ..task
        };
        assert_eq!(
            kinds(&check.unsupported_in_task(&task)),
            [
                (FactKind::Number, "5550143"),
                (FactKind::Date, "Tuesday"),
                (FactKind::Name, "Maria"),
            ]
        );
        let summary = CallSummary {
            recap: "Ana called.".into(),
            next_steps: vec!["Call her Monday at 555-0142.".into()],
            summary: "Ana wants a call back on Monday.".into(),
        };
        assert_eq!(check.unsupported_in_summary(&summary), []);
    }

    #[test]
    fn facts_serialize_in_snake_case() {
        let json = serde_json::to_string(&fact(FactKind::Number, "5550143")).unwrap();
        assert_eq!(json, r#"{"kind":"number","text":"5550143"}"#);
    }
}
