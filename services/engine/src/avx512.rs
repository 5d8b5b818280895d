//! The AVX-512 VNNI tile kernels (layout in `matrix.rs`).
//!
//! Per block of a tile: the 16 scales are widened from f16 once; for each token the integer
//! sum starts at `-offset × Σ x` and each 64-byte group of weight codes is multiplied with the
//! token's four matching activation codes (one 32-bit broadcast) by `vpdpbusd`; the 16 sums
//! then go to f32 and are added, times scale × activation scale, with one FMA. The loads of
//! the weights are shared by up to four tokens (prompt processing). Int4 and Int5 unpack two
//! nibbles per byte first, Int5 adding the fifth bits with masked byte adds; Int6 masks its
//! first half's codes out of their bytes and puts the second half's together from the top bits
//! of those and a nibble plane. Int4Affine adds its terms times the activation sum with a
//! second FMA, Int6 the sums of its second half block times their own scales. The first and
//! second half of a block go to two chains of sums, so no chain waits on more than four
//! `vpdpbusd`.
//! Each block asks for the weights some kilobytes on, except on AMD CPUs
//! (`matrix::prefetch_ahead`).

use std::arch::x86_64::*;

use crate::activations::Rows;
use crate::matrix::kernel_formats::{AFFINE, INT4, INT5, INT6, INT8, format_of};
use crate::matrix::{BLOCK, Format, TILE, prefetch_lines};

simd_tile_product!();

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const N: usize, const FORMAT: u8>(
    w: &[u8],
    x: Rows,
    out: &mut [[f32; TILE]],
    ahead: usize,
) {
    let format = format_of(FORMAT);
    let blocks = x.cols / BLOCK;
    let block_bytes = format.block_bytes();
    let offset = format.offset();
    let sixteen = _mm512_set1_epi8(16);
    let six_bits = _mm512_set1_epi8(63);
    let top_two = _mm512_set1_epi8(0x30);
    let nibble = _mm512_set1_epi8(15);
    let mut acc = [_mm512_setzero_ps(); N];
    let w = w.as_ptr();
    let q = x.q.as_ptr();
    for b in 0..blocks {
        // SAFETY (whole loop): offsets stay below `blocks * block_bytes` in `w` and below
        // `N * cols` in `x.q`, `N * blocks` in `x.d`, `x.s` and `x.h` (asserted by the caller).
        unsafe {
            let block = w.add(b * block_bytes);
            if ahead != 0 {
                prefetch_lines(block, ahead, block_bytes);
            }
            let scales = _mm512_cvtph_ps(_mm256_loadu_si256(block as *const __m256i));
            let codes = block.add(format.header());
            // Two chains of sums per token (even and odd groups, or low and high nibbles),
            // added at the end: one chain of eight dependent `vpdpbusd` a block would bound a
            // single token's product by their latency rather than by memory.
            let mut sums = [_mm512_setzero_si512(); N];
            let mut more = [_mm512_setzero_si512(); N];
            for (j, (s, h)) in sums.iter_mut().zip(&mut more).enumerate() {
                let (all, first) = (
                    *x.s.get_unchecked(j * blocks + b),
                    *x.h.get_unchecked(j * blocks + b),
                );
                if FORMAT == INT6 {
                    // Each half has its own scales, so each chain its own offset.
                    *s = _mm512_set1_epi32(-offset * first);
                    *h = _mm512_set1_epi32(-offset * (all - first));
                } else {
                    *s = _mm512_set1_epi32(-offset * all);
                }
            }
            // The activation codes of column group `g` of token `j`, broadcast.
            let group = |j: usize, g: usize| {
                let at = q.add(j * x.cols + b * BLOCK + 4 * g) as *const i32;
                _mm512_set1_epi32(at.read_unaligned())
            };
            if FORMAT == INT6 {
                for pair in 0..2 {
                    let nibbles = _mm512_loadu_si512(codes.add(256 + 64 * pair) as *const _);
                    for half in 0..2 {
                        let g = 2 * pair + half;
                        let v = _mm512_loadu_si512(codes.add(64 * g) as *const _);
                        let low = _mm512_and_si512(v, six_bits);
                        let n = if half == 0 {
                            _mm512_and_si512(nibbles, nibble)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16(nibbles, 4), nibble)
                        };
                        // Bits 4–5 from the byte's top two, the others from the nibble (whose
                        // bits 6–7 are clear): `select ? a : b` is truth table 0xE4.
                        let high =
                            _mm512_ternarylogic_epi32::<0xE4>(_mm512_srli_epi16(v, 2), n, top_two);
                        for (j, (s, h)) in sums.iter_mut().zip(&mut more).enumerate() {
                            *s = _mm512_dpbusd_epi32(*s, low, group(j, g));
                            *h = _mm512_dpbusd_epi32(*h, high, group(j, g + 4));
                        }
                    }
                }
            } else if FORMAT != INT8 {
                let masks = codes.add(256) as *const u64;
                for g in 0..4 {
                    let v = _mm512_loadu_si512(codes.add(64 * g) as *const _);
                    let mut low = _mm512_and_si512(v, nibble);
                    let mut high = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                    if FORMAT == INT5 {
                        // The fifth bits: 16 added where a mask bit is set.
                        let k_low = _cvtu64_mask64(masks.add(2 * g).read_unaligned());
                        let k_high = _cvtu64_mask64(masks.add(2 * g + 1).read_unaligned());
                        low = _mm512_mask_add_epi8(low, k_low, low, sixteen);
                        high = _mm512_mask_add_epi8(high, k_high, high, sixteen);
                    }
                    for (j, (s, h)) in sums.iter_mut().zip(&mut more).enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, low, group(j, g));
                        *h = _mm512_dpbusd_epi32(*h, high, group(j, g + 4));
                    }
                }
            } else {
                for g in (0..8).step_by(2) {
                    let v = _mm512_loadu_si512(codes.add(64 * g) as *const _);
                    let w = _mm512_loadu_si512(codes.add(64 * (g + 1)) as *const _);
                    for (j, (s, h)) in sums.iter_mut().zip(&mut more).enumerate() {
                        *s = _mm512_dpbusd_epi32(*s, v, group(j, g));
                        *h = _mm512_dpbusd_epi32(*h, w, group(j, g + 1));
                    }
                }
            }
            if FORMAT != INT6 {
                for (s, h) in sums.iter_mut().zip(&more) {
                    *s = _mm512_add_epi32(*s, *h);
                }
            }
            for (j, ((a, s), h)) in acc.iter_mut().zip(&sums).zip(&more).enumerate() {
                let d = *x.d.get_unchecked(j * blocks + b);
                let scale = _mm512_mul_ps(scales, _mm512_set1_ps(d));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*s), scale, *a);
                if FORMAT == INT6 {
                    // The second half with its own scales.
                    let seconds =
                        _mm512_cvtph_ps(_mm256_loadu_si256(block.add(32) as *const __m256i));
                    let scale = _mm512_mul_ps(seconds, _mm512_set1_ps(d));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*h), scale, *a);
                }
                if FORMAT == AFFINE {
                    // The added terms times the block's activation sum.
                    let terms =
                        _mm512_cvtph_ps(_mm256_loadu_si256(block.add(32) as *const __m256i));
                    let sum = d * *x.s.get_unchecked(j * blocks + b) as f32;
                    *a = _mm512_fmadd_ps(terms, _mm512_set1_ps(sum), *a);
                }
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: `o` holds 16 f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
}
