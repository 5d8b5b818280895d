//! The AVX2 tile kernels (layout in `matrix.rs`), for x86-64 CPUs without AVX-512 VNNI
//! (AMD Zen 1–3, Intel Haswell and later cores without AVX-512).
//!
//! A 64-byte group of codes is two 256-bit halves, rows 0–7 and rows 8–15, so a token's sums
//! are two vectors of eight rows each. AVX2 has no `vpdpbusd`; its place is taken by
//! `vpmaddubsw` (unsigned × signed bytes, adjacent pairs added into 16-bit lanes) and
//! `vpmaddwd` by ones (adjacent 16-bit lanes added into 32-bit ones), which give the same sum
//! of four products per row. The 16-bit sums saturate, so they are widened before they can:
//! a product pair of 4-bit codes (at most 15 × 127 × 2) leaves room for four groups in 16
//! bits, of 5-bit codes (31 × 127 × 2) for four, of 6-bit codes (63 × 127 × 2) for two.
//! Int8 codes (up to 255) would overflow a pair, so they are made signed again (code − 128)
//! and multiplied as |w| × (x with w's sign): at most 128 × 127 × 2, the signed values'
//! product directly, with no offset to cancel. Activation codes stay within ±127
//! ([`crate::activations::quantize`]); −128 would give a wrong sign there.
//!
//! The fifth bits of Int5 come from their 64-bit masks, 32 bits a half: each byte picks its
//! mask byte by a shuffle and its bit by a compare, and adds 16. Int6 codes are masked out of
//! their bytes, or put together from the bytes' top bits and a nibble (see `matrix.rs`).
//! Everything after the integer sums is the AVX-512 kernel's arithmetic, eight rows at a time,
//! so both give the portable kernel's results bit for bit.

use std::arch::x86_64::*;

use crate::activations::Rows;
use crate::matrix::kernel_formats::{AFFINE, INT4, INT5, INT6, INT8, format_of};
use crate::matrix::{BLOCK, Format, TILE, prefetch_lines};

simd_tile_product!();

/// 32 bits of a code mask as 32 bytes: `add` where the byte's bit is set, else 0.
#[target_feature(enable = "avx2")]
fn bits_to_bytes(bits: u32, add: __m256i) -> __m256i {
    // Byte i takes mask byte i / 8 (every 32-bit lane holds the four) and tests bit i % 8.
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), pick);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    _mm256_and_si256(set, add)
}

/// An Int6 group's codes (half `v` of its bytes): the first half block's, masked out of the
/// bytes, and the second's, their top two bits from the bytes' bits 6–7 and the rest from
/// the nibbles at `nibbles` (low nibbles for an even group, high for an odd one).
///
/// # Safety
/// `nibbles` must be valid for reading 32 bytes.
#[target_feature(enable = "avx2")]
unsafe fn codes_of_int6(v: __m256i, nibbles: *const u8, odd: usize) -> (__m256i, __m256i) {
    let nibble = _mm256_set1_epi8(15);
    // SAFETY: the caller's promise.
    let n = unsafe { _mm256_loadu_si256(nibbles as *const __m256i) };
    let n = if odd == 1 {
        _mm256_and_si256(_mm256_srli_epi16(n, 4), nibble)
    } else {
        _mm256_and_si256(n, nibble)
    };
    let top = _mm256_and_si256(_mm256_srli_epi16(v, 2), _mm256_set1_epi8(0x30));
    (
        _mm256_and_si256(v, _mm256_set1_epi8(63)),
        _mm256_or_si256(top, n),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const N: usize, const FORMAT: u8>(
    w: &[u8],
    x: Rows,
    out: &mut [[f32; TILE]],
    ahead: usize,
) {
    let format = format_of(FORMAT);
    // Groups whose 16-bit sums are added before they are widened: four, two for Int6 (see the
    // module's notes); Int8's are widened at once.
    let widen_every = if FORMAT == INT6 { 2 } else { 4 };
    let blocks = x.cols / BLOCK;
    let block_bytes = format.block_bytes();
    // Int8 codes are multiplied as signed values, so nothing is subtracted for them.
    let offset = if FORMAT == INT8 { 0 } else { format.offset() };
    let sixteen = _mm256_set1_epi8(16);
    let nibble = _mm256_set1_epi8(15);
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let zero = _mm256_setzero_si256();
    // Per token and half (rows 0–7, 8–15).
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
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
            let halves = |at: usize| {
                let p = block.add(at) as *const __m128i;
                [
                    _mm256_cvtph_ps(_mm_loadu_si128(p)),
                    _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                ]
            };
            let scales = halves(0);
            let codes = block.add(format.header());
            // 32-bit sums per token and half: the first chain (low nibbles, or even groups of
            // Int8) and the second; 16-bit sums waiting to be widened into them.
            let mut first = [[zero; 2]; N];
            let mut second = [[zero; 2]; N];
            let mut first16 = [[zero; 2]; N];
            let mut second16 = [[zero; 2]; N];
            for j in 0..N {
                let (all, low) = (
                    *x.s.get_unchecked(j * blocks + b),
                    *x.h.get_unchecked(j * blocks + b),
                );
                if FORMAT == INT6 {
                    // Each half block has its own scales, so each chain its own offset.
                    first[j] = [_mm256_set1_epi32(-offset * low); 2];
                    second[j] = [_mm256_set1_epi32(-offset * (all - low)); 2];
                } else {
                    first[j] = [_mm256_set1_epi32(-offset * all); 2];
                }
            }
            // The activation codes of column group `g` of token `j`, broadcast.
            let group = |j: usize, g: usize| {
                let at = q.add(j * x.cols + b * BLOCK + 4 * g) as *const i32;
                _mm256_set1_epi32(at.read_unaligned())
            };
            let widen = |sums: &mut [[__m256i; 2]; N], sums16: &mut [[__m256i; 2]; N]| {
                for (s, s16) in sums.iter_mut().zip(sums16.iter_mut()) {
                    for h in 0..2 {
                        s[h] = _mm256_add_epi32(s[h], _mm256_madd_epi16(s16[h], ones));
                        s16[h] = zero;
                    }
                }
            };
            if FORMAT != INT8 {
                let masks = codes.add(256) as *const u32;
                for g in 0..4 {
                    for h in 0..2 {
                        let v = _mm256_loadu_si256(codes.add(64 * g + 32 * h) as *const __m256i);
                        let (mut low, mut high) = if FORMAT == INT6 {
                            codes_of_int6(v, codes.add(256 + 64 * (g / 2) + 32 * h), g % 2)
                        } else {
                            (
                                _mm256_and_si256(v, nibble),
                                _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble),
                            )
                        };
                        if FORMAT == INT5 {
                            // The fifth bits (mask 2g for the low nibbles, 2g + 1 for the
                            // high ones, 32 bits a half).
                            let k_low = masks.add(4 * g + h).read_unaligned();
                            let k_high = masks.add(4 * g + 2 + h).read_unaligned();
                            low = _mm256_or_si256(low, bits_to_bytes(k_low, sixteen));
                            high = _mm256_or_si256(high, bits_to_bytes(k_high, sixteen));
                        }
                        for j in 0..N {
                            let (l, u) = (
                                _mm256_maddubs_epi16(low, group(j, g)),
                                _mm256_maddubs_epi16(high, group(j, g + 4)),
                            );
                            first16[j][h] = _mm256_add_epi16(first16[j][h], l);
                            second16[j][h] = _mm256_add_epi16(second16[j][h], u);
                        }
                    }
                    if (g + 1) % widen_every == 0 {
                        widen(&mut first, &mut first16);
                        widen(&mut second, &mut second16);
                    }
                }
            } else {
                for g in 0..8 {
                    for h in 0..2 {
                        let v = _mm256_loadu_si256(codes.add(64 * g + 32 * h) as *const __m256i);
                        let signed = _mm256_xor_si256(v, flip);
                        let magnitude = _mm256_abs_epi8(signed);
                        for j in 0..N {
                            let x = _mm256_sign_epi8(group(j, g), signed);
                            let p = _mm256_maddubs_epi16(magnitude, x);
                            if g % 2 == 0 {
                                first16[j][h] = p;
                            } else {
                                second16[j][h] = p;
                            }
                        }
                    }
                    if g % 2 == 0 {
                        widen(&mut first, &mut first16);
                    } else {
                        widen(&mut second, &mut second16);
                    }
                }
            }
            if FORMAT != INT6 {
                for (f, s) in first.iter_mut().zip(&second) {
                    for h in 0..2 {
                        f[h] = _mm256_add_epi32(f[h], s[h]);
                    }
                }
            }
            let seconds = if FORMAT == INT6 || FORMAT == AFFINE {
                halves(32)
            } else {
                [_mm256_setzero_ps(); 2]
            };
            for (j, a) in acc.iter_mut().enumerate() {
                let d = *x.d.get_unchecked(j * blocks + b);
                for h in 0..2 {
                    let scale = _mm256_mul_ps(scales[h], _mm256_set1_ps(d));
                    a[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(first[j][h]), scale, a[h]);
                    if FORMAT == INT6 {
                        // The second half block with its own scales.
                        let scale = _mm256_mul_ps(seconds[h], _mm256_set1_ps(d));
                        a[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(second[j][h]), scale, a[h]);
                    }
                    if FORMAT == AFFINE {
                        // The added terms times the block's activation sum.
                        let sum = d * *x.s.get_unchecked(j * blocks + b) as f32;
                        a[h] = _mm256_fmadd_ps(seconds[h], _mm256_set1_ps(sum), a[h]);
                    }
                }
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        // SAFETY: `o` holds 16 f32, two halves of eight.
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
}
