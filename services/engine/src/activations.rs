//! Activations quantized for the matrix kernels: per token and per block of [`BLOCK`] values,
//! signed 8-bit codes, an f32 scale, the sum of the codes (which cancels the offset the weight
//! codes are stored with; see [`crate::matrix`]) and the sum of its first half's codes (for
//! weights with a scale per half block).

use crate::matrix::BLOCK;

/// `tokens` rows of `cols` activations, quantized.
#[derive(Debug, Clone)]
pub struct Activations {
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<i32>,
    h: Vec<i32>,
}

/// A read-only view of quantized rows: what the kernels take.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    pub cols: usize,
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [i32],
    pub h: &'a [i32],
}

impl Rows<'_> {
    /// Rows in the view.
    pub fn tokens(&self) -> usize {
        self.q.len() / self.cols.max(1)
    }
}

impl Activations {
    /// Room for `tokens` rows of `cols` values (`cols` a multiple of [`BLOCK`]).
    pub fn new(tokens: usize, cols: usize) -> Activations {
        debug_assert!(cols.is_multiple_of(BLOCK));
        let blocks = tokens * cols / BLOCK;
        Activations {
            cols,
            q: vec![0; tokens * cols],
            d: vec![0.0; blocks],
            s: vec![0; blocks],
            h: vec![0; blocks],
        }
    }

    /// Quantizes `x` (one row of `cols` values) into row `token`.
    pub fn set(&mut self, token: usize, x: &[f32]) {
        let (cols, nb) = (self.cols, self.cols / BLOCK);
        quantize(
            x,
            &mut self.q[token * cols..(token + 1) * cols],
            &mut self.d[token * nb..(token + 1) * nb],
            &mut self.s[token * nb..(token + 1) * nb],
            &mut self.h[token * nb..(token + 1) * nb],
        );
    }

    /// The first `tokens` rows.
    pub fn rows(&self, tokens: usize) -> Rows<'_> {
        let nb = self.cols / BLOCK;
        Rows {
            cols: self.cols,
            q: &self.q[..tokens * self.cols],
            d: &self.d[..tokens * nb],
            s: &self.s[..tokens * nb],
            h: &self.h[..tokens * nb],
        }
    }

    /// The buffers, for writing rows from several threads (see `model.rs`).
    pub(crate) fn parts_mut(&mut self) -> (&mut [i8], &mut [f32], &mut [i32], &mut [i32]) {
        (&mut self.q, &mut self.d, &mut self.s, &mut self.h)
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Quantizes `x` block by block: scale = largest magnitude / 127, codes rounded to nearest
/// (half away from zero), each block's code sum and its first half's.
pub fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [i32], h: &mut [i32]) {
    for ((((x, q), d), s), h) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
        .zip(h.iter_mut())
    {
        // Eight lanes, so the compiler keeps the largest magnitude in a vector register.
        let mut lanes = [0.0f32; 8];
        for part in x.chunks_exact(8) {
            for (m, v) in lanes.iter_mut().zip(part) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0.0f32, |m, &v| m.max(v));
        let scale = amax / 127.0;
        let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (q, &v) in q.iter_mut().zip(x) {
            // Finite input keeps |v · inverse| ≤ 127; NaN becomes 0 with `as`.
            *q = (v * inverse).round().clamp(-127.0, 127.0) as i8;
        }
        let sum_of = |codes: &[i8]| codes.iter().map(|&c| i32::from(c)).sum::<i32>();
        let (first, second) = q.split_at(BLOCK / 2);
        *h = sum_of(first);
        let sum = *h + sum_of(second);
        *d = scale;
        *s = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_scales_and_sums_reproduce_the_values() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.5) * 0.37).collect();
        let mut a = Activations::new(1, 64);
        a.set(0, &x);
        let rows = a.rows(1);
        assert_eq!(rows.tokens(), 1);
        for b in 0..2 {
            let block = &x[b * 32..(b + 1) * 32];
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert_eq!(rows.d[b], amax / 127.0);
            let codes = &rows.q[b * 32..(b + 1) * 32];
            assert!(codes.iter().any(|&c| c.abs() == 127));
            assert_eq!(rows.s[b], codes.iter().map(|&c| i32::from(c)).sum::<i32>());
            let first_half = codes[..16].iter().map(|&c| i32::from(c)).sum::<i32>();
            assert_eq!(rows.h[b], first_half);
            for (&c, &v) in codes.iter().zip(block) {
                assert!((f32::from(c) * rows.d[b] - v).abs() <= rows.d[b] / 2.0 + 1e-6);
            }
        }
    }

    #[test]
    fn a_zero_block_has_zero_codes() {
        let mut a = Activations::new(2, 32);
        a.set(1, &[0.0; 32]);
        let rows = a.rows(2);
        assert!(rows.q[32..].iter().all(|&c| c == 0));
        assert_eq!((rows.d[1], rows.s[1], rows.h[1]), (0.0, 0, 0));
    }
}
