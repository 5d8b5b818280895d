//! The fixed-point basic operators of GSM 06.10 (section 5.1).
//!
//! Every operator works on 16-bit words exactly as the standard defines it,
//! so the decoder's output is bit-exact with the reference implementation.
//! None of them can panic or overflow: additions saturate, products are
//! computed in 32 bits and shifts take their count from a small range.

/// Largest 16-bit word (`MAX_WORD` in the standard).
pub(crate) const MAX_WORD: i16 = i16::MAX;
/// Smallest 16-bit word (`MIN_WORD` in the standard).
pub(crate) const MIN_WORD: i16 = i16::MIN;

/// `add(a, b)`: saturating 16-bit addition.
#[inline(always)]
pub(crate) fn add(a: i16, b: i16) -> i16 {
    a.saturating_add(b)
}

/// `sub(a, b)`: saturating 16-bit subtraction.
#[inline(always)]
pub(crate) fn sub(a: i16, b: i16) -> i16 {
    a.saturating_sub(b)
}

/// `mult_r(a, b)`: fractional multiplication with rounding,
/// `(a * b + 16384) >> 15`, where `MIN_WORD * MIN_WORD` gives `MAX_WORD`.
#[inline(always)]
pub(crate) fn mult_r(a: i16, b: i16) -> i16 {
    if a == MIN_WORD && b == MIN_WORD {
        MAX_WORD
    } else {
        // |a * b| <= 2^30, so neither the product nor the rounding overflows
        // and the shifted result always fits in 16 bits.
        ((i32::from(a) * i32::from(b) + 16384) >> 15) as i16
    }
}

/// `a >> n` (arithmetic) for any shift count, as the standard's `asr`:
/// counts of 16 or more give the sign, negative counts shift left.
#[inline(always)]
pub(crate) fn asr(a: i16, n: i16) -> i16 {
    if n >= 16 {
        if a < 0 { -1 } else { 0 }
    } else if n <= -16 {
        0
    } else if n < 0 {
        // Truncating to 16 bits, as the reference does for a word result.
        ((i32::from(a) << -n) & 0xFFFF) as u16 as i16
    } else {
        a >> n
    }
}

/// `a << n` for any shift count, as the standard's `asl`:
/// counts of 16 or more give 0, negative counts shift right.
#[inline(always)]
pub(crate) fn asl(a: i16, n: i16) -> i16 {
    if n >= 16 {
        0
    } else if n <= -16 {
        if a < 0 { -1 } else { 0 }
    } else if n < 0 {
        asr(a, -n)
    } else {
        ((i32::from(a) << n) & 0xFFFF) as u16 as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_add_sub() {
        assert_eq!(add(MAX_WORD, 1), MAX_WORD);
        assert_eq!(add(MIN_WORD, -1), MIN_WORD);
        assert_eq!(sub(MIN_WORD, 1), MIN_WORD);
        assert_eq!(sub(0, MIN_WORD), MAX_WORD);
        assert_eq!(add(1000, -3000), -2000);
    }

    #[test]
    fn mult_r_rounds_and_saturates() {
        assert_eq!(mult_r(MIN_WORD, MIN_WORD), MAX_WORD);
        assert_eq!(mult_r(16384, 16384), 8192);
        assert_eq!(mult_r(MAX_WORD, MAX_WORD), 32766);
        assert_eq!(mult_r(MIN_WORD, MAX_WORD), -32767);
        assert_eq!(mult_r(1, 16384), 1); // 0.5 rounds up
        assert_eq!(mult_r(-1, 16384), 0);
    }

    #[test]
    fn shifts_cover_all_counts() {
        assert_eq!(asr(-5, 1), -3);
        assert_eq!(asr(-5, 20), -1);
        assert_eq!(asr(5, 20), 0);
        assert_eq!(asr(3, -2), 12);
        assert_eq!(asr(3, -20), 0);
        assert_eq!(asl(1, -1), 0);
        assert_eq!(asl(1, 9), 512);
        assert_eq!(asl(1, 15), MIN_WORD);
        assert_eq!(asl(1, 16), 0);
        assert_eq!(asl(-8, -20), -1);
    }
}
