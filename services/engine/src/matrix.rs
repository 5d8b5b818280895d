//! Weight matrices repacked for the kernels, and the matrix-times-activations product.
//!
//! # Layout
//!
//! Rows are grouped in tiles of [`TILE`] rows and columns in blocks of [`BLOCK`] values. A
//! tile stores its blocks one after the other; a block of a tile is the 16 rows' f16 scales
//! (32 bytes) and then their codes, interleaved four at a time: bytes `4r..4r + 4` of each
//! 64-byte group are row `r`'s codes for four consecutive columns. One 64-byte load then
//! holds four columns of all 16 rows, and one AVX-512 VNNI instruction (`vpdpbusd`) multiplies
//! them by the matching four activation codes, broadcast, and adds into 16 per-row sums: the
//! inner loop is a load and a multiply-add, and a tile's product is one vector of 16 results.
//! The AVX2 kernel takes a group as two 32-byte halves of eight rows and multiplies with
//! `vpmaddubsw` and `vpmaddwd` (see `avx2.rs`); both give the portable kernel's results.
//!
//! * [`Format::Int8`]: 8 groups of 64 bytes per block; codes are the signed values plus 128.
//! * [`Format::Int4`]: 4 groups; byte `k` of row `r` in group `g` holds the code of column
//!   `4g + k` in its low nibble and of column `16 + 4g + k` in its high nibble, as unsigned
//!   values plus 8. That is exactly the byte order of ggml's Q4_0 blocks, so a Q4_0 matrix is
//!   repacked without decoding it.
//!
//! * [`Format::Int5`]: the Int4 nibbles of the values plus 16, then their fifth bits: eight
//!   64-bit masks, mask `2g` for the low-nibble columns of group `g` and `2g + 1` for the
//!   high-nibble ones, bit `4r + k` for row `r`'s byte `k`. A masked byte add (AVX-512BW) puts
//!   the bit back. That is Q5_0's 5.5 bits per weight, code for code.
//! * [`Format::Int4Affine`]: Int4 with a second f16 per row and block after the scales, a term
//!   added to every value (`scale × (code − 8) + term`), multiplied by the block's activation
//!   sum: Q4_K's sub-blocks (a 6-bit scale and minimum each) at 5 bits per weight.
//! * [`Format::Int6`]: the values plus 32, six bits each. The first 16 columns of a block are
//!   bytes in Int8's order (four groups), each with the top two bits of the matching code of
//!   the last 16 columns in its bits 6–7; the low four bits of those follow as nibbles in two
//!   64-byte planes, group `2i` in the low and `2i + 1` in the high nibbles of plane `i`. A
//!   code of the first half is one AND, of the second a shift and one three-way bit select
//!   (`vpternlogd`). The scales are those of the first 16 columns, and a second f16 per row
//!   and block follows for the last 16: Q6_K's sub-blocks of 16 values at 7 bits per weight.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, hence the offsets: the weight codes are
//! stored unsigned and the product of the offset with the activation codes, `offset × Σ x`,
//! is subtracted with the block's activation sum (kept with the quantized activations).
//!
//! # From GGUF
//!
//! Q8_0, Q5_0 and Q4_0 blocks are copied code for code with their f16 scale, into the
//! narrowest format that holds them (Int4 for Q4_0, Int5 for Q5_0, Int8): the engine computes
//! with exactly the weights of the file. Q4_K keeps its codes, its sub-block scale and minimum
//! multiplied out and rounded to f16 (Int4Affine). Every other type is decoded to f32 and
//! quantized to Int8 by block (scale = largest magnitude / 127, rounded to f16). A matrix of
//! stacked tensors keeps each tensor's format in a segment of whole tiles; tensors that share a
//! tile share the format that holds both.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Device;
use candle_core::quantized::{GgmlDType, ggml_file};
use half::f16;

use crate::activations::Rows;
use crate::error::{Error, Result};
use crate::pages::{Pages, Region};

/// Rows per tile.
pub const TILE: usize = 16;
/// Values per block (one scale per row and block).
pub const BLOCK: usize = 32;
/// Bytes of a block's scales.
const SCALES: usize = TILE * 2;
/// Tokens multiplied together by one pass over a tile.
const TOKENS_PER_PASS: usize = 4;
/// How far ahead of the block it computes a kernel asks for the weights, on CPUs whose own
/// prefetchers fall short. Where memory is far (an Intel server's virtual machine: a read loop
/// of 512-bit loads at 24 GB/s, of 64-bit loads at 14), the core alone does not keep enough
/// lines in flight while it also unpacks codes; 4–16 KB ahead took generation from 58 % to
/// 69–85 % of the bound there. On AMD Zen 4 the same requests cost: a thread read the default
/// model's matrices 7–13 % slower with them than without (docs/BENCHMARKS.md), so AMD CPUs go
/// without (see [`prefetch_ahead`]).
pub const PREFETCH_AHEAD: usize = 4096;

/// The kernels' distance plus one, or 0 before it is first asked for.
static PREFETCH: AtomicUsize = AtomicUsize::new(0);

/// How far ahead the kernels ask for weights, in bytes (0: they leave it to the CPU): set by
/// [`set_prefetch_ahead`], else [`PREFETCH_AHEAD`] on every CPU but AMD's.
pub fn prefetch_ahead() -> usize {
    match PREFETCH.load(Ordering::Relaxed) {
        0 => {
            let distance = default_prefetch_ahead();
            PREFETCH.store(distance + 1, Ordering::Relaxed);
            distance
        }
        set => set - 1,
    }
}

/// Sets the kernels' distance for the whole process (0: no requests ahead); a hint that
/// changes their speed, never their results (`companion bench kernels` compares both).
pub fn set_prefetch_ahead(bytes: usize) {
    PREFETCH.store(bytes.saturating_add(1), Ordering::Relaxed);
}

/// [`PREFETCH_AHEAD`], or 0 on an AMD CPU.
fn default_prefetch_ahead() -> usize {
    if cpu_vendor_is_amd() {
        0
    } else {
        PREFETCH_AHEAD
    }
}

fn cpu_vendor_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        // "AuthenticAMD", in EBX, EDX, ECX.
        [id.ebx, id.edx, id.ecx] == [0x6874_7541, 0x6974_6E65, 0x444D_4163]
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Asks for the `bytes` bytes `ahead` bytes on from `block`, a cache line at a time. A
/// prefetch past the end of the weights (the next tiles, or nothing) is only a hint.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_lines(block: *const u8, ahead: usize, bytes: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(ahead + line) as *const i8) };
    }
}

/// How a matrix's codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Signed 8-bit codes.
    Int8,
    /// Signed 4-bit codes.
    Int4,
    /// Signed 5-bit codes.
    Int5,
    /// Signed 4-bit codes and an added term per row and block.
    Int4Affine,
    /// Signed 6-bit codes and a scale per row and half block.
    Int6,
}

impl Format {
    /// Bytes of one block of one tile.
    pub fn block_bytes(self) -> usize {
        SCALES
            + match self {
                Format::Int8 => TILE * BLOCK,
                Format::Int4 => TILE * BLOCK / 2,
                Format::Int5 => TILE * BLOCK / 2 + TILE * BLOCK / 8,
                Format::Int4Affine => SCALES + TILE * BLOCK / 2,
                Format::Int6 => SCALES + TILE * BLOCK / 2 + TILE * BLOCK / 4,
            }
    }

    /// Bytes before the codes: the scales, and the terms of Int4Affine or the second scales of
    /// Int6.
    pub fn header(self) -> usize {
        match self {
            Format::Int4Affine | Format::Int6 => 2 * SCALES,
            _ => SCALES,
        }
    }

    /// What the stored codes add to the signed values.
    pub fn offset(self) -> i32 {
        match self {
            Format::Int8 => 128,
            Format::Int4 | Format::Int4Affine => 8,
            Format::Int5 => 16,
            Format::Int6 => 32,
        }
    }
}

/// The SIMD kernels' format parameter: `tile::<N, FORMAT>` is monomorphized per format.
#[cfg(target_arch = "x86_64")]
pub(crate) mod kernel_formats {
    use super::Format;

    pub const INT8: u8 = 0;
    pub const INT4: u8 = 1;
    pub const INT5: u8 = 2;
    pub const AFFINE: u8 = 3;
    pub const INT6: u8 = 4;

    pub const fn format_of(code: u8) -> Format {
        match code {
            INT8 => Format::Int8,
            INT4 => Format::Int4,
            INT5 => Format::Int5,
            INT6 => Format::Int6,
            _ => Format::Int4Affine,
        }
    }
}

/// A SIMD module's `tile_product`: checks the slices, then calls the module's
/// `tile::<N, FORMAT>` for the format and (through `tokens`) the token count (1 to 4), asking
/// for the weights `ahead` bytes on (0: not at all).
#[cfg(target_arch = "x86_64")]
macro_rules! simd_tile_product {
    () => {
        /// One tile (`w`: its blocks) times `out.len()` (1 to 4) tokens of `x`.
        pub(crate) fn tile_product(
            format: Format,
            w: &[u8],
            x: Rows,
            out: &mut [[f32; TILE]],
            ahead: usize,
        ) {
            let blocks = x.cols / BLOCK;
            assert!(w.len() >= blocks * format.block_bytes());
            assert!(x.q.len() >= out.len() * x.cols && x.d.len() >= out.len() * blocks);
            assert!(x.s.len() >= out.len() * blocks && x.h.len() >= out.len() * blocks);
            // SAFETY: the kernel is only chosen when the CPU reports its features
            // (`Kernel::runs_here`), and the asserts above keep every load inside the slices.
            unsafe {
                match format {
                    Format::Int8 => tokens::<INT8>(w, x, out, ahead),
                    Format::Int4 => tokens::<INT4>(w, x, out, ahead),
                    Format::Int5 => tokens::<INT5>(w, x, out, ahead),
                    Format::Int4Affine => tokens::<AFFINE>(w, x, out, ahead),
                    Format::Int6 => tokens::<INT6>(w, x, out, ahead),
                }
            }
        }

        /// `tile::<N, FORMAT>` for the token count `out.len()` (1 to 4).
        ///
        /// # Safety
        /// As `tile`: the CPU runs the kernel and the slices hold what it reads.
        #[inline(always)]
        unsafe fn tokens<const FORMAT: u8>(
            w: &[u8],
            x: Rows,
            out: &mut [[f32; TILE]],
            ahead: usize,
        ) {
            // SAFETY: the caller's promise.
            unsafe {
                match out.len() {
                    1 => tile::<1, FORMAT>(w, x, out, ahead),
                    2 => tile::<2, FORMAT>(w, x, out, ahead),
                    3 => tile::<3, FORMAT>(w, x, out, ahead),
                    _ => tile::<4, FORMAT>(w, x, out, ahead),
                }
            }
        }
    };
}

/// Which implementation multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, for any CPU.
    Portable,
    /// AVX2 with FMA and F16C (x86-64: Intel Haswell and later, AMD Zen and later).
    Avx2,
    /// AVX-512 with VNNI (x86-64: Intel Ice Lake and later, AMD Zen 4 and later).
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel, the slowest first.
    pub const ALL: [Kernel; 3] = [Kernel::Portable, Kernel::Avx2, Kernel::Avx512Vnni];

    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        Kernel::ALL
            .into_iter()
            .rev()
            .find(|k| k.runs_here())
            .unwrap_or(Kernel::Portable)
    }

    /// Whether this CPU has the instructions the kernel uses.
    pub fn runs_here(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `self` if this CPU runs it, else [`Kernel::Portable`].
    pub fn checked(self) -> Kernel {
        if self.runs_here() {
            self
        } else {
            Kernel::Portable
        }
    }

    /// Its name in logs and benchmark tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// What a product does with its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `out = W · x`.
    Store,
    /// `out += W · x` (a residual connection).
    Add,
}

/// A GGUF tensor's rows as stored in the file.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub name: &'a str,
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

impl Stored<'_> {
    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.bytes[r * n..(r + 1) * n]
    }

    fn fail(&self, problem: String) -> Error {
        Error::Tensor {
            name: self.name.to_string(),
            problem,
        }
    }
}

/// A weight matrix in the tiled layout, in segments of whole tiles that may each have their
/// own format (Q, K and V stacked when V has more bits than Q and K).
pub struct Matrix {
    rows: usize,
    cols: usize,
    segments: Vec<Segment>,
    data: Pages,
}

/// Tiles of one format: from `first` (a tile index) on, stored from byte `at` of the data.
#[derive(Debug, Clone, Copy)]
struct Segment {
    format: Format,
    first: usize,
    at: usize,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

/// The format for the codes of every one of `parts`: Int4 for Q4_0 only, Int4Affine for Q4_K
/// only, Int6 for Q6_K only, Int5 for Q5_0 and Q4_0, else Int8.
fn format_for(parts: &[Stored]) -> Format {
    if parts.iter().all(|p| p.dtype == GgmlDType::Q4_0) {
        Format::Int4
    } else if parts.iter().all(|p| p.dtype == GgmlDType::Q4K) {
        Format::Int4Affine
    } else if parts.iter().all(|p| p.dtype == GgmlDType::Q6K) {
        Format::Int6
    } else if parts
        .iter()
        .all(|p| matches!(p.dtype, GgmlDType::Q4_0 | GgmlDType::Q5_0))
    {
        Format::Int5
    } else {
        Format::Int8
    }
}

impl Matrix {
    /// Stacks `parts` (same column count) into one matrix, their rows one after the other.
    /// A part starts a segment of its own format where it starts a tile and its format differs
    /// from the segment before; otherwise it joins that segment, whose format then holds both.
    pub fn pack(parts: &[Stored]) -> Result<Matrix> {
        Matrix::pack_in(parts, None)
    }

    /// [`Matrix::pack`] into memory carved from `region` (a model's matrices share one).
    pub(crate) fn pack_in(parts: &[Stored], region: Option<&Arc<Region>>) -> Result<Matrix> {
        let first = parts
            .first()
            .ok_or_else(|| Error::InvalidInput("a matrix needs at least one part".into()))?;
        let cols = first.cols;
        for p in parts {
            if p.cols != cols || cols == 0 || !cols.is_multiple_of(BLOCK) {
                return Err(p.fail(format!(
                    "rows of {} values (the matrix needs {cols}, a multiple of {BLOCK})",
                    p.cols
                )));
            }
            if !cols.is_multiple_of(p.dtype.block_size()) || p.bytes.len() != p.rows * p.row_bytes()
            {
                return Err(p.fail(format!(
                    "{} bytes do not hold {} rows of {cols} {:?} values",
                    p.bytes.len(),
                    p.rows,
                    p.dtype
                )));
            }
        }
        // Which parts each segment holds.
        let mut groups: Vec<Range<usize>> = Vec::new();
        let mut rows = 0usize;
        for (i, p) in parts.iter().enumerate() {
            match groups.last_mut() {
                Some(g)
                    if !rows.is_multiple_of(TILE)
                        || format_for(std::slice::from_ref(p)) == format_for(&parts[g.clone()]) =>
                {
                    g.end = i + 1
                }
                _ => groups.push(i..i + 1),
            }
            rows += p.rows;
        }
        let blocks = cols / BLOCK;
        let mut segments = Vec::with_capacity(groups.len());
        let (mut tiles, mut bytes) = (0, 0);
        for g in &groups {
            let format = format_for(&parts[g.clone()]);
            segments.push(Segment {
                format,
                first: tiles,
                at: bytes,
            });
            let n = parts[g.clone()]
                .iter()
                .map(|p| p.rows)
                .sum::<usize>()
                .div_ceil(TILE);
            tiles += n;
            bytes += n * blocks * format.block_bytes();
        }
        let mut data = Pages::zeroed(bytes, region);

        // Which part, and which row of it, each matrix row comes from.
        let mut origin = Vec::with_capacity(rows);
        for (i, p) in parts.iter().enumerate() {
            origin.extend((0..p.rows).map(|r| (i, r)));
        }
        let mut codes = vec![0i8; TILE * cols];
        let mut scales = vec![0u16; TILE * blocks];
        let mut seconds = vec![0u16; TILE * blocks];
        let mut matrix = Matrix {
            rows,
            cols,
            segments,
            data: Pages::zeroed(0, None),
        };
        for tile in 0..tiles {
            let (segment, range) = matrix.locate(tile);
            codes.fill(0);
            scales.fill(0);
            seconds.fill(0);
            let here = &origin[tile * TILE..((tile + 1) * TILE).min(rows)];
            let mut r = 0;
            while r < here.len() {
                // A run of rows of one part, decoded together.
                let (part, first_row) = here[r];
                let run = here[r..].iter().take_while(|(p, _)| *p == part).count();
                decode_rows(
                    &parts[part],
                    first_row..first_row + run,
                    &mut codes[r * cols..(r + run) * cols],
                    &mut scales[r * blocks..(r + run) * blocks],
                    &mut seconds[r * blocks..(r + run) * blocks],
                )?;
                r += run;
            }
            interleave(
                segment.format,
                &codes,
                &scales,
                &seconds,
                cols,
                &mut data[range],
            );
        }
        matrix.data = data;
        Ok(matrix)
    }

    /// The segment of `tile`, and where its bytes are.
    fn locate(&self, tile: usize) -> (Segment, Range<usize>) {
        let i = self.segments.partition_point(|s| s.first <= tile) - 1;
        let segment = self.segments[i];
        let bytes = self.cols / BLOCK * segment.format.block_bytes();
        let at = segment.at + (tile - segment.first) * bytes;
        (segment, at..at + bytes)
    }

    /// The stored bytes of `tiles` (one after the other in every segment).
    pub fn tile_data(&self, tiles: Range<usize>) -> &[u8] {
        if tiles.is_empty() {
            return &[];
        }
        let (_, first) = self.locate(tiles.start);
        let (_, last) = self.locate(tiles.end - 1);
        &self.data[first.start..last.end]
    }

    /// The formats of the segments, in order.
    pub fn formats(&self) -> Vec<Format> {
        self.segments.iter().map(|s| s.format).collect()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE)
    }

    /// Bytes the product reads.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// A matrix of `rows` × `cols` (multiples of [`TILE`] and [`BLOCK`]) in `format`, its codes
    /// pseudo-random from `seed` and its scales and terms small positive f16 values: for
    /// measuring the kernels (`companion bench kernels`), whose speed does not depend on the
    /// values.
    pub fn synthetic(format: Format, rows: usize, cols: usize, seed: u64) -> Result<Matrix> {
        if rows == 0 || !rows.is_multiple_of(TILE) || cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Err(Error::InvalidInput(format!(
                "a synthetic matrix needs rows in multiples of {TILE} and columns in multiples of {BLOCK}, not {rows} × {cols}"
            )));
        }
        let mut state = seed | 1;
        let mut data = Pages::zeroed(rows / TILE * cols / BLOCK * format.block_bytes(), None);
        for byte in data.iter_mut() {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = (state >> 32) as u8;
        }
        let small = f16::from_f32(0.01).to_bits().to_le_bytes();
        for block in data.chunks_exact_mut(format.block_bytes()) {
            for half in block[..format.header()].chunks_exact_mut(2) {
                half.copy_from_slice(&small);
            }
        }
        Ok(Matrix {
            rows,
            cols,
            segments: vec![Segment {
                format,
                first: 0,
                at: 0,
            }],
            data,
        })
    }

    /// Row `row` as f32 values (an embedding lookup from a tied output matrix).
    pub fn row(&self, row: usize, out: &mut [f32]) {
        let (tile, r) = (row / TILE, row % TILE);
        let (segment, bytes) = self.locate(tile);
        let format = segment.format;
        for (b, block) in self.data[bytes]
            .chunks_exact(format.block_bytes())
            .enumerate()
        {
            let term = match format {
                Format::Int4Affine => half_at(block, SCALES + 2 * r),
                _ => 0.0,
            };
            let values = &mut out[b * BLOCK..(b + 1) * BLOCK];
            let codes = &block[format.header()..];
            for (c, v) in values.iter_mut().enumerate() {
                let scale = half_at(block, 2 * r + scale_at(format, c));
                *v = code(format, codes, r, c) as f32 * scale + term;
            }
        }
    }

    /// `out[t × ld + row] (=|+=) Σ_c W[row][c] · x_t[c]` for every token `t` of `x` and every
    /// row of `tiles`, with `kernel`.
    ///
    /// # Safety
    /// `out` must be valid for reads and writes at those positions, and no other thread may
    /// access them during the call.
    pub unsafe fn multiply_raw(
        &self,
        kernel: Kernel,
        x: Rows,
        tiles: Range<usize>,
        out: *mut f32,
        ld: usize,
        write: Write,
    ) {
        debug_assert_eq!(x.cols, self.cols);
        let kernel = kernel.checked();
        let ahead = prefetch_ahead();
        let tokens = x.tokens();
        let blocks = self.cols / BLOCK;
        let mut results = [[0.0f32; TILE]; TOKENS_PER_PASS];
        for tile in tiles {
            let (segment, bytes) = self.locate(tile);
            let w = &self.data[bytes];
            let valid = TILE.min(self.rows - tile * TILE);
            let mut t0 = 0;
            while t0 < tokens {
                let n = TOKENS_PER_PASS.min(tokens - t0);
                let xs = Rows {
                    cols: x.cols,
                    q: &x.q[t0 * x.cols..(t0 + n) * x.cols],
                    d: &x.d[t0 * blocks..(t0 + n) * blocks],
                    s: &x.s[t0 * blocks..(t0 + n) * blocks],
                    h: &x.h[t0 * blocks..(t0 + n) * blocks],
                };
                tile_product(kernel, segment.format, w, xs, &mut results[..n], ahead);
                for (j, result) in results[..n].iter().enumerate() {
                    // SAFETY: the caller guarantees `out` covers rows `tile*TILE..+valid` of
                    // token `t0 + j` and that nobody else touches them.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.add((t0 + j) * ld + tile * TILE), valid)
                    };
                    match write {
                        Write::Store => dst.copy_from_slice(&result[..valid]),
                        Write::Add => dst.iter_mut().zip(result).for_each(|(o, v)| *o += v),
                    }
                }
                t0 += n;
            }
        }
    }

    /// [`Matrix::multiply_raw`] over every tile, on this thread: `out` holds `x.tokens()` rows
    /// of [`Matrix::rows`] values.
    pub fn multiply(&self, kernel: Kernel, x: Rows, out: &mut [f32], write: Write) {
        assert!(out.len() >= x.tokens() * self.rows, "output too small");
        assert_eq!(x.cols, self.cols, "activations of another width");
        // SAFETY: `out` is an exclusive borrow covering every position written.
        unsafe {
            self.multiply_raw(
                kernel,
                x,
                0..self.tiles(),
                out.as_mut_ptr(),
                self.rows,
                write,
            )
        }
    }
}

/// The f16 at `at`, as f32.
fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Where the scales of column `c` of a block start: Int6 has its own for the last 16 columns.
fn scale_at(format: Format, c: usize) -> usize {
    if format == Format::Int6 && c >= BLOCK / 2 {
        SCALES
    } else {
        0
    }
}

/// The signed value of row `r`, column `c` of a block's codes.
fn code(format: Format, codes: &[u8], r: usize, c: usize) -> i32 {
    match format {
        Format::Int8 => i32::from(codes[(c / 4) * 64 + 4 * r + c % 4]) - 128,
        Format::Int4 | Format::Int4Affine => {
            let byte = codes[((c % 16) / 4) * 64 + 4 * r + c % 4];
            i32::from(if c < 16 { byte & 15 } else { byte >> 4 }) - 8
        }
        Format::Int5 => {
            let byte = codes[((c % 16) / 4) * 64 + 4 * r + c % 4];
            let nibble = if c < 16 { byte & 15 } else { byte >> 4 };
            let (mask, bit) = (2 * ((c % 16) / 4) + c / 16, 4 * r + c % 4);
            let high = (codes[256 + 8 * mask + bit / 8] >> (bit % 8)) & 1;
            i32::from(nibble | (high << 4)) - 16
        }
        Format::Int6 => {
            let (group, at) = ((c % 16) / 4, 4 * r + c % 4);
            let byte = codes[64 * group + at];
            let code = if c < 16 {
                byte & 63
            } else {
                let nibbles = codes[256 + 64 * (group / 2) + at];
                ((nibbles >> (4 * (group % 2))) & 15) | ((byte >> 6) << 4)
            };
            i32::from(code) - 32
        }
    }
}

/// One tile times up to [`TOKENS_PER_PASS`] tokens (`ahead`: see [`prefetch_ahead`]).
fn tile_product(
    kernel: Kernel,
    format: Format,
    w: &[u8],
    x: Rows,
    out: &mut [[f32; TILE]],
    ahead: usize,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => crate::avx512::tile_product(format, w, x, out, ahead),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => crate::avx2::tile_product(format, w, x, out, ahead),
        _ => portable_tile_product(format, w, x, out),
    }
}

/// The reference product: the same integer sums and the same f32 operations in the same order
/// as the SIMD kernels, so their results are identical.
pub(crate) fn portable_tile_product(format: Format, w: &[u8], x: Rows, out: &mut [[f32; TILE]]) {
    let blocks = x.cols / BLOCK;
    let offset = format.offset();
    for (t, out) in out.iter_mut().enumerate() {
        let q = &x.q[t * x.cols..(t + 1) * x.cols];
        for (r, o) in out.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (b, block) in w
                .chunks_exact(format.block_bytes())
                .take(blocks)
                .enumerate()
            {
                let codes = &block[format.header()..];
                let xq = &q[b * BLOCK..(b + 1) * BLOCK];
                let (d, s, h) = (
                    x.d[t * blocks + b],
                    x.s[t * blocks + b],
                    x.h[t * blocks + b],
                );
                // The sums of the two halves of the block (the low and high nibbles).
                let (mut first, mut second) = (-offset * h, -offset * (s - h));
                for (c, &xv) in xq.iter().enumerate() {
                    let product = (code(format, codes, r, c) + offset) * i32::from(xv);
                    if c < BLOCK / 2 {
                        first += product;
                    } else {
                        second += product;
                    }
                }
                if format == Format::Int6 {
                    acc = (first as f32).mul_add(half_at(block, 2 * r) * d, acc);
                    acc = (second as f32).mul_add(half_at(block, SCALES + 2 * r) * d, acc);
                } else {
                    let sum = first + second;
                    acc = (sum as f32).mul_add(half_at(block, 2 * r) * d, acc);
                }
                if format == Format::Int4Affine {
                    acc = half_at(block, SCALES + 2 * r).mul_add(d * s as f32, acc);
                }
            }
            *o = acc;
        }
    }
}

/// Writes one tile's decoded rows (`codes`: signed values, row-major; `scales` and `seconds`:
/// f16 bits per row and block, `seconds` the terms of Int4Affine or the scales of the second
/// half block of Int6) into the tiled layout.
fn interleave(
    format: Format,
    codes: &[i8],
    scales: &[u16],
    seconds: &[u16],
    cols: usize,
    out: &mut [u8],
) {
    let blocks = cols / BLOCK;
    for (b, block) in out.chunks_exact_mut(format.block_bytes()).enumerate() {
        for r in 0..TILE {
            block[2 * r..2 * r + 2].copy_from_slice(&scales[r * blocks + b].to_le_bytes());
            if format.header() == 2 * SCALES {
                let at = SCALES + 2 * r;
                block[at..at + 2].copy_from_slice(&seconds[r * blocks + b].to_le_bytes());
            }
        }
        let dst = &mut block[format.header()..];
        for r in 0..TILE {
            let row = &codes[r * cols + b * BLOCK..r * cols + (b + 1) * BLOCK];
            match format {
                Format::Int8 => {
                    for (c, &v) in row.iter().enumerate() {
                        dst[(c / 4) * 64 + 4 * r + c % 4] = (i32::from(v) + 128) as u8;
                    }
                }
                Format::Int6 => {
                    for c in 0..16 {
                        let low = (i32::from(row[c]) + 32) as u8;
                        let high = (i32::from(row[c + 16]) + 32) as u8;
                        let (group, at) = (c / 4, 4 * r + c % 4);
                        dst[64 * group + at] = low | ((high >> 4) << 6);
                        dst[256 + 64 * (group / 2) + at] |= (high & 15) << (4 * (group % 2));
                    }
                }
                Format::Int4 | Format::Int5 | Format::Int4Affine => {
                    let offset = format.offset();
                    for c in 0..16 {
                        let low = (i32::from(row[c]) + offset) as u8;
                        let high = (i32::from(row[c + 16]) + offset) as u8;
                        let at = (c / 4) * 64 + 4 * r + c % 4;
                        dst[at] = (low & 15) | ((high & 15) << 4);
                        let bit = 4 * r + c % 4;
                        if format == Format::Int5 {
                            for (mask, code) in [(2 * (c / 4), low), (2 * (c / 4) + 1, high)] {
                                dst[256 + 8 * mask + bit / 8] |= ((code >> 4) & 1) << (bit % 8);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Decodes rows `range` of `part` into signed codes, f16 scales and the `seconds` of
/// [`interleave`] (Q4_K, Q6_K).
fn decode_rows(
    part: &Stored,
    range: Range<usize>,
    codes: &mut [i8],
    scales: &mut [u16],
    seconds: &mut [u16],
) -> Result<()> {
    let cols = part.cols;
    let blocks = cols / BLOCK;
    let half = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
    match part.dtype {
        GgmlDType::Q8_0 | GgmlDType::Q5_0 | GgmlDType::Q4_0 => {
            let block_bytes = part.dtype.type_size();
            for (i, r) in range.enumerate() {
                let row = part.row(r);
                for (b, blk) in row.chunks_exact(block_bytes).enumerate() {
                    scales[i * blocks + b] = half(blk);
                    let dst = &mut codes[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
                    match part.dtype {
                        GgmlDType::Q8_0 => {
                            for (d, &q) in dst.iter_mut().zip(&blk[2..]) {
                                *d = q as i8;
                            }
                        }
                        GgmlDType::Q5_0 => {
                            let high = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                            for (j, d) in dst.iter_mut().enumerate() {
                                let nibble = (blk[6 + j % 16] >> (4 * (j / 16))) & 15;
                                let bit = ((high >> j) & 1) as u8;
                                *d = (nibble | (bit << 4)) as i8 - 16;
                            }
                        }
                        _ => {
                            for (j, d) in dst.iter_mut().enumerate() {
                                let nibble = (blk[2 + j % 16] >> (4 * (j / 16))) & 15;
                                *d = nibble as i8 - 8;
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        GgmlDType::Q4K => {
            // A super-block of 256 values: f16 d and dmin, 12 bytes of packed 6-bit sub-block
            // scales and minimums, 128 bytes of codes (two sub-blocks per 32 bytes: low
            // nibbles, then high). Value = d × scale × code − dmin × minimum.
            for (i, r) in range.enumerate() {
                for (sb, blk) in part.row(r).chunks_exact(144).enumerate() {
                    let d = f16::from_bits(half(&blk[0..2])).to_f32();
                    let dmin = f16::from_bits(half(&blk[2..4])).to_f32();
                    let packed = &blk[4..16];
                    for j in 0..8 {
                        let (sc, m) = if j < 4 {
                            (packed[j] & 63, packed[j + 4] & 63)
                        } else {
                            (
                                (packed[j + 4] & 15) | ((packed[j - 4] >> 6) << 4),
                                (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
                            )
                        };
                        let b = sb * 8 + j;
                        let scale = f16::from_f32(d * f32::from(sc));
                        let term = 8.0 * scale.to_f32() - dmin * f32::from(m);
                        scales[i * blocks + b] = scale.to_bits();
                        seconds[i * blocks + b] = f16::from_f32(term).to_bits();
                        let quants = &blk[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
                        let dst = &mut codes[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
                        for (d, &q) in dst.iter_mut().zip(quants) {
                            *d = ((q >> (4 * (j % 2))) & 15) as i8 - 8;
                        }
                    }
                }
            }
            Ok(())
        }
        GgmlDType::Q6K => {
            // A super-block of 256 values: 128 bytes of low nibbles, 64 of high bit pairs, 16
            // int8 sub-block scales, f16 d. Value v (of 256) is in half n = v / 128, quarter
            // k = v % 128 / 32 at l = v % 32: its low nibble in byte 64n + 32(k % 2) + l (low
            // or high by k / 2), its high bits at 2k in byte 32n + l of the pairs, its scale
            // d × scale[v / 16]. Value = scale × (code − 32).
            for (i, r) in range.enumerate() {
                for (sb, blk) in part.row(r).chunks_exact(210).enumerate() {
                    let (low, pairs, sub) = (&blk[..128], &blk[128..192], &blk[192..208]);
                    let d = f16::from_bits(half(&blk[208..210])).to_f32();
                    for j in 0..8 {
                        let b = sb * 8 + j;
                        let scale = |s: usize| f16::from_f32(d * f32::from(sub[s] as i8)).to_bits();
                        scales[i * blocks + b] = scale(2 * j);
                        seconds[i * blocks + b] = scale(2 * j + 1);
                        let (n, k) = (j / 4, j % 4);
                        let dst = &mut codes[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
                        for (l, d) in dst.iter_mut().enumerate() {
                            let nibble = (low[64 * n + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
                            let bits = (pairs[32 * n + l] >> (2 * k)) & 3;
                            *d = (nibble | (bits << 4)) as i8 - 32;
                        }
                    }
                }
            }
            Ok(())
        }
        dtype => {
            let n = range.len();
            let bytes = &part.bytes[range.start * part.row_bytes()..range.end * part.row_bytes()];
            let values = dequantize(part.name, dtype, bytes, n * cols)?;
            for (i, row) in values.chunks_exact(cols).enumerate() {
                if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
                    return Err(part.fail(format!("row {} holds {bad}", range.start + i)));
                }
                for (b, x) in row.chunks_exact(BLOCK).enumerate() {
                    let (scale, q) = quantize_block(x);
                    scales[i * blocks + b] = scale;
                    codes[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK].copy_from_slice(&q);
                }
            }
            Ok(())
        }
    }
}

/// `len` values of a GGUF tensor's blocks, decoded to f32 by candle's decoders.
pub(crate) fn dequantize(
    name: &str,
    dtype: GgmlDType,
    bytes: &[u8],
    len: usize,
) -> Result<Vec<f32>> {
    ggml_file::qtensor_from_ggml(dtype, bytes, vec![len], &Device::Cpu)
        .and_then(|t| t.dequantize(&Device::Cpu))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|source| Error::Decode {
            name: name.to_string(),
            source,
        })
}

/// Int8 codes of one block of weights: f16 scale = largest magnitude / 127, codes rounded
/// against the f16 scale.
fn quantize_block(x: &[f32]) -> (u16, [i8; BLOCK]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = f16::from_f32(amax / 127.0);
    let s = scale.to_f32();
    let mut q = [0i8; BLOCK];
    if s > 0.0 {
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v / s).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (scale.to_bits(), q)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::activations::Activations;

    /// A deterministic pseudo-random sequence.
    pub(crate) struct Lcg(pub u64);

    impl Lcg {
        pub fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }

        pub fn float(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 - 1.0
        }
    }

    /// `rows × cols` GGUF blocks of `dtype` (Q8_0, Q5_0 or Q4_0) with random codes and scales,
    /// and the values they stand for.
    pub(crate) fn blocks(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        seed: u64,
    ) -> (Vec<u8>, Vec<f32>) {
        let mut rng = Lcg(seed);
        let mut bytes = Vec::new();
        let mut values = Vec::new();
        for _ in 0..rows * cols / 32 {
            let d = f16::from_f32(0.001 + (rng.next() % 1000) as f32 * 1e-5);
            bytes.extend(d.to_bits().to_le_bytes());
            let d = d.to_f32();
            match dtype {
                GgmlDType::Q8_0 => {
                    for _ in 0..32 {
                        let q = (rng.next() % 255) as i32 - 127;
                        bytes.push(q as i8 as u8);
                        values.push(q as f32 * d);
                    }
                }
                GgmlDType::Q5_0 => {
                    let codes: Vec<u32> = (0..32).map(|_| rng.next() % 32).collect();
                    let high = codes
                        .iter()
                        .enumerate()
                        .fold(0u32, |h, (j, c)| h | ((c >> 4) << j));
                    bytes.extend(high.to_le_bytes());
                    bytes.extend(
                        (0..16).map(|j| ((codes[j] & 15) | ((codes[j + 16] & 15) << 4)) as u8),
                    );
                    values.extend(codes.iter().map(|&c| (c as i32 - 16) as f32 * d));
                }
                GgmlDType::Q4_0 => {
                    let codes: Vec<u32> = (0..32).map(|_| rng.next() % 16).collect();
                    bytes.extend((0..16).map(|j| (codes[j] | (codes[j + 16] << 4)) as u8));
                    values.extend(codes.iter().map(|&c| (c as i32 - 8) as f32 * d));
                }
                other => panic!("no test blocks for {other:?}"),
            }
        }
        (bytes, values)
    }

    fn stored<'a>(
        name: &'a str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: &'a [u8],
    ) -> Stored<'a> {
        Stored {
            name,
            dtype,
            rows,
            cols,
            bytes,
        }
    }

    fn activations(tokens: usize, cols: usize, seed: u64) -> (Activations, Vec<f32>) {
        let mut rng = Lcg(seed);
        let x: Vec<f32> = (0..tokens * cols).map(|_| rng.float()).collect();
        let mut a = Activations::new(tokens, cols);
        for (t, row) in x.chunks_exact(cols).enumerate() {
            a.set(t, row);
        }
        (a, x)
    }

    #[test]
    fn exact_formats_are_repacked_code_for_code() {
        for (dtype, format) in [
            (GgmlDType::Q8_0, Format::Int8),
            (GgmlDType::Q5_0, Format::Int5),
            (GgmlDType::Q4_0, Format::Int4),
        ] {
            let (bytes, values) = blocks(dtype, 40, 96, 7);
            let m = Matrix::pack(&[stored("w", dtype, 40, 96, &bytes)]).unwrap();
            assert_eq!(m.formats(), [format]);
            assert_eq!((m.rows(), m.cols(), m.tiles()), (40, 96, 3));
            let mut row = vec![0.0; 96];
            for r in 0..40 {
                m.row(r, &mut row);
                assert_eq!(row, values[r * 96..(r + 1) * 96], "{dtype:?} row {r}");
            }
        }
    }

    #[test]
    fn parts_keep_their_formats_in_segments_of_whole_tiles() {
        let (a, va) = blocks(GgmlDType::Q5_0, 16, 64, 1);
        let (b, vb) = blocks(GgmlDType::Q4_0, 24, 64, 2);
        let (c, vc) = blocks(GgmlDType::Q8_0, 16, 64, 3);
        let m = Matrix::pack(&[
            stored("a", GgmlDType::Q5_0, 16, 64, &a),
            stored("b", GgmlDType::Q4_0, 24, 64, &b),
            stored("c", GgmlDType::Q8_0, 16, 64, &c),
        ])
        .unwrap();
        // b ends inside a tile, so c joins its segment, in the format that holds both.
        assert_eq!(m.formats(), [Format::Int5, Format::Int8]);
        assert_eq!(m.rows(), 56);
        let block = |f: Format| 2 * f.block_bytes();
        assert_eq!(m.bytes(), block(Format::Int5) + 3 * block(Format::Int8));
        let mut row = vec![0.0; 64];
        for (r, want) in [(5, &va[5 * 64..]), (39, &vb[23 * 64..]), (40, &vc[..])] {
            m.row(r, &mut row);
            assert_eq!(row, want[..64], "row {r}");
        }
    }

    #[test]
    fn mixed_parts_within_a_tile_share_a_format() {
        let (a, va) = blocks(GgmlDType::Q4_0, 8, 64, 1);
        let (b, vb) = blocks(GgmlDType::Q8_0, 8, 64, 2);
        let m = Matrix::pack(&[
            stored("a", GgmlDType::Q4_0, 8, 64, &a),
            stored("b", GgmlDType::Q8_0, 8, 64, &b),
        ])
        .unwrap();
        assert_eq!((m.formats(), m.rows()), (vec![Format::Int8], 16));
        let mut row = vec![0.0; 64];
        m.row(3, &mut row);
        assert_eq!(row, va[3 * 64..4 * 64]);
        m.row(12, &mut row);
        assert_eq!(row, vb[4 * 64..5 * 64]);
    }

    /// Q4_K against candle's own decoding of the same random blocks: the codes are kept, the
    /// scale and minimum products are rounded to f16.
    #[test]
    fn q4_k_keeps_its_codes_with_an_added_term() {
        let (rows, cols) = (20, 512);
        let mut rng = Lcg(9);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 256 {
            bytes.extend(
                f16::from_f32(0.002 + (rng.next() % 100) as f32 * 1e-5)
                    .to_bits()
                    .to_le_bytes(),
            );
            bytes.extend(
                f16::from_f32(0.001 + (rng.next() % 100) as f32 * 1e-5)
                    .to_bits()
                    .to_le_bytes(),
            );
            bytes.extend((0..140).map(|_| rng.next() as u8));
        }
        let m = Matrix::pack(&[stored("k", GgmlDType::Q4K, rows, cols, &bytes)]).unwrap();
        assert_eq!(m.formats(), [Format::Int4Affine]);
        let want = dequantize("k", GgmlDType::Q4K, &bytes, rows * cols).unwrap();
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            m.row(r, &mut row);
            for (c, (got, want)) in row.iter().zip(&want[r * cols..]).enumerate() {
                assert!(
                    (got - want).abs() <= 2e-3 * (1.0 + want.abs()),
                    "r{r} c{c}: {got} vs {want}"
                );
            }
        }
        // The product, SIMD and portable alike.
        let (a, _) = activations(5, cols, 4);
        let mut reference = vec![0.0; 5 * rows];
        m.multiply(Kernel::Portable, a.rows(5), &mut reference, Write::Store);
        for t in 0..5 {
            for r in 0..rows {
                m.row(r, &mut row);
                let x = a.rows(5);
                let exact: f64 = (0..cols)
                    .map(|c| {
                        f64::from(row[c])
                            * f64::from(x.q[t * cols + c])
                            * f64::from(x.d[(t * cols + c) / 32])
                    })
                    .sum();
                assert!(
                    (f64::from(reference[t * rows + r]) - exact).abs() < 1e-3 * (1.0 + exact.abs())
                );
            }
        }
        for kernel in simd_kernels() {
            let mut fast = vec![0.0; 5 * rows];
            m.multiply(kernel, a.rows(5), &mut fast, Write::Store);
            assert_eq!(fast, reference, "{kernel:?}");
        }
    }

    /// Q6_K against candle's own decoding of the same random blocks: the codes are kept, the
    /// scales of its 16-value sub-blocks multiplied out and rounded to f16; the product is the
    /// dot product of those values, SIMD and portable alike.
    #[test]
    fn q6_k_keeps_its_codes_with_a_scale_per_half_block() {
        let (rows, cols) = (32, 512);
        let mut rng = Lcg(5);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 256 {
            bytes.extend((0..192).map(|_| rng.next() as u8));
            bytes.extend((0..16).map(|_| (rng.next() % 255) as u8));
            let d = f16::from_f32(0.0005 + (rng.next() % 100) as f32 * 1e-5);
            bytes.extend(d.to_bits().to_le_bytes());
        }
        let m = Matrix::pack(&[stored("k", GgmlDType::Q6K, rows, cols, &bytes)]).unwrap();
        assert_eq!(m.formats(), [Format::Int6]);
        assert_eq!(m.bytes(), rows * cols * 7 / 8);
        let want = dequantize("k", GgmlDType::Q6K, &bytes, rows * cols).unwrap();
        let mut row = vec![0.0; cols];
        let mut values = Vec::new();
        for r in 0..rows {
            m.row(r, &mut row);
            for (c, (got, want)) in row.iter().zip(&want[r * cols..]).enumerate() {
                assert!(
                    (got - want).abs() <= 2e-3 * want.abs() + 1e-6,
                    "r{r} c{c}: {got} vs {want}"
                );
            }
            values.extend_from_slice(&row);
        }
        let tokens = 6;
        let (a, _) = activations(tokens, cols, 8);
        let x = a.rows(tokens);
        let mut reference = vec![0.0; tokens * rows];
        m.multiply(Kernel::Portable, x, &mut reference, Write::Store);
        for t in 0..tokens {
            for r in 0..rows {
                let exact: f64 = (0..cols)
                    .map(|c| {
                        f64::from(values[r * cols + c])
                            * f64::from(x.q[t * cols + c])
                            * f64::from(x.d[(t * cols + c) / 32])
                    })
                    .sum();
                let got = f64::from(reference[t * rows + r]);
                assert!(
                    (got - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                    "{got} vs {exact}"
                );
            }
        }
        for kernel in simd_kernels() {
            for n in 1..=tokens {
                let mut fast = vec![0.0; n * rows];
                let mut portable = vec![0.0; n * rows];
                m.multiply(kernel, a.rows(n), &mut fast, Write::Store);
                m.multiply(Kernel::Portable, a.rows(n), &mut portable, Write::Store);
                assert_eq!(fast, portable, "{kernel:?}, {n} tokens");
            }
        }
    }

    #[test]
    fn other_types_are_quantized_to_int8() {
        let mut rng = Lcg(3);
        let values: Vec<f32> = (0..32 * 64).map(|_| rng.float()).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = Matrix::pack(&[stored("f", GgmlDType::F32, 32, 64, &bytes)]).unwrap();
        assert_eq!(m.formats(), [Format::Int8]);
        let mut row = vec![0.0; 64];
        for r in 0..32 {
            m.row(r, &mut row);
            for (got, want) in row.iter().zip(&values[r * 64..]) {
                assert!((got - want).abs() <= 1.0 / 127.0, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn bad_shapes_and_values_are_errors() {
        let (bytes, _) = blocks(GgmlDType::Q8_0, 4, 64, 1);
        let err = Matrix::pack(&[stored("w", GgmlDType::Q8_0, 5, 64, &bytes)]).unwrap_err();
        assert!(err.to_string().contains("do not hold 5 rows"), "{err}");
        let f: Vec<u8> = (0..48).flat_map(|_| 1.0f32.to_le_bytes()).collect();
        let err = Matrix::pack(&[stored("odd", GgmlDType::F32, 1, 48, &f)]).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "{err}");
        let mut nan: Vec<u8> = (0..32).flat_map(|_| 1.0f32.to_le_bytes()).collect();
        nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        let err = Matrix::pack(&[stored("nan", GgmlDType::F32, 1, 32, &nan)]).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(Matrix::pack(&[]).is_err());
    }

    /// The product against f32 arithmetic on the dequantized weights and activations.
    #[test]
    fn the_product_is_the_dot_product_of_the_values() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_0] {
            let (rows, cols, tokens) = (37, 128, 6);
            let (bytes, w) = blocks(dtype, rows, cols, 11);
            let m = Matrix::pack(&[stored("w", dtype, rows, cols, &bytes)]).unwrap();
            let (a, _) = activations(tokens, cols, 5);
            let x = a.rows(tokens);
            let mut out = vec![0.0; tokens * rows];
            m.multiply(Kernel::Portable, x, &mut out, Write::Store);
            for t in 0..tokens {
                for r in 0..rows {
                    let want: f64 = (0..cols)
                        .map(|c| {
                            let xv = f64::from(x.q[t * cols + c])
                                * f64::from(x.d[t * cols / 32 + c / 32]);
                            f64::from(w[r * cols + c]) * xv
                        })
                        .sum();
                    let got = f64::from(out[t * rows + r]);
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{dtype:?} t{t} r{r}: {got} vs {want}"
                    );
                }
            }
            let before = out.clone();
            m.multiply(Kernel::Portable, x, &mut out, Write::Add);
            assert!(out.iter().zip(&before).all(|(o, b)| *o == 2.0 * b));
        }
    }

    /// The SIMD kernels this CPU runs.
    fn simd_kernels() -> Vec<Kernel> {
        let kernels: Vec<Kernel> = Kernel::ALL
            .into_iter()
            .filter(|k| *k != Kernel::Portable && k.runs_here())
            .collect();
        if kernels.is_empty() {
            eprintln!("this CPU has no SIMD kernel; nothing to compare");
        }
        kernels
    }

    #[test]
    fn detect_picks_the_fastest_kernel_this_cpu_runs() {
        let kernel = Kernel::detect();
        assert!(kernel.runs_here());
        let faster = Kernel::ALL.iter().skip_while(|k| **k != kernel).skip(1);
        for k in faster {
            assert!(!k.runs_here(), "{k:?} runs here but {kernel:?} was picked");
            assert_eq!(k.checked(), Kernel::Portable);
        }
        assert_eq!(kernel.checked(), kernel);
    }

    /// Every SIMD kernel gives the portable kernel's results bit for bit, for every token
    /// count a pass takes and a row count that leaves a partial tile.
    #[test]
    fn every_simd_kernel_matches_the_portable_one() {
        for kernel in simd_kernels() {
            compare_with_portable(kernel);
        }
    }

    /// A synthetic matrix of every format multiplies as the portable kernel does on every
    /// kernel, its values are finite, and sizes off the tile grid are refused.
    #[test]
    fn synthetic_matrices_hold_every_format() {
        let formats = [
            Format::Int8,
            Format::Int4,
            Format::Int5,
            Format::Int4Affine,
            Format::Int6,
        ];
        let cols = 256;
        let (a, _) = activations(1, cols, 5);
        for format in formats {
            let m = Matrix::synthetic(format, 32, cols, 7).unwrap();
            assert_eq!((m.rows(), m.cols(), m.formats()), (32, cols, vec![format]));
            assert_eq!(m.bytes(), 2 * cols / BLOCK * format.block_bytes());
            let mut row = vec![0.0; cols];
            m.row(17, &mut row);
            assert!(
                row.iter().all(|v| v.is_finite() && v.abs() < 5.0),
                "{format:?}"
            );
            assert!(row.iter().any(|&v| v != 0.0), "{format:?}");
            let mut reference = vec![0.0; 32];
            m.multiply(Kernel::Portable, a.rows(1), &mut reference, Write::Store);
            for kernel in simd_kernels() {
                let mut out = vec![0.0; 32];
                m.multiply(kernel, a.rows(1), &mut out, Write::Store);
                assert_eq!(out, reference, "{format:?} on {kernel:?}");
            }
        }
        assert_ne!(
            *Matrix::synthetic(Format::Int8, 32, cols, 1).unwrap().data,
            *Matrix::synthetic(Format::Int8, 32, cols, 2).unwrap().data
        );
        for (rows, cols) in [(0, 32), (20, 32), (16, 0), (16, 40)] {
            let err = Matrix::synthetic(Format::Int4, rows, cols, 1).unwrap_err();
            assert!(err.to_string().contains("multiples"), "{err}");
        }
    }

    /// AMD CPUs go without requests ahead, others ask 4 KB on; either way the kernels give
    /// the same results.
    #[test]
    fn prefetching_is_off_on_amd_and_never_changes_a_result() {
        if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
            let amd = cpuinfo.contains("AuthenticAMD");
            assert_eq!(default_prefetch_ahead() == 0, amd, "AMD: {amd}");
        }
        let m = Matrix::synthetic(Format::Int6, 64, 4864, 3).unwrap();
        let (a, _) = activations(1, 4864, 8);
        let mut results = Vec::new();
        for ahead in [0, PREFETCH_AHEAD, 64] {
            set_prefetch_ahead(ahead);
            assert_eq!(prefetch_ahead(), ahead);
            for kernel in simd_kernels() {
                let mut out = vec![0.0; 64];
                m.multiply(kernel, a.rows(1), &mut out, Write::Store);
                results.push(out);
            }
        }
        set_prefetch_ahead(default_prefetch_ahead());
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    fn compare_with_portable(kernel: Kernel) {
        let cols = 896;
        let parts: Vec<_> = [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_0]
            .into_iter()
            .map(|dtype| (dtype, blocks(dtype, 40, cols, 21).0))
            .collect();
        let mut matrices: Vec<Matrix> = parts
            .iter()
            .map(|(dtype, bytes)| Matrix::pack(&[stored("w", *dtype, 40, cols, bytes)]).unwrap())
            .collect();
        // All three in segments of their own, the last one ending in a partial tile.
        let (q4, q5, q8) = (&parts[2], &parts[1], &parts[0]);
        matrices.push(
            Matrix::pack(&[
                stored("a", q4.0, 32, cols, &q4.1[..32 * cols / 32 * 18]),
                stored("b", q5.0, 16, cols, &q5.1[..16 * cols / 32 * 22]),
                stored("c", q8.0, 40, cols, &q8.1),
            ])
            .unwrap(),
        );
        assert_eq!(
            matrices[3].formats(),
            [Format::Int4, Format::Int5, Format::Int8]
        );
        for m in &matrices {
            let (rows, dtype) = (m.rows(), m.formats());
            for tokens in 1..=9 {
                let (a, _) = activations(tokens, cols, tokens as u64);
                let mut fast = vec![0.0; tokens * rows];
                let mut reference = vec![0.0; tokens * rows];
                m.multiply(kernel, a.rows(tokens), &mut fast, Write::Store);
                m.multiply(
                    Kernel::Portable,
                    a.rows(tokens),
                    &mut reference,
                    Write::Store,
                );
                assert_eq!(fast, reference, "{dtype:?}, {tokens} tokens");
            }
        }
    }
}
