//! `companion bench kernels`: the engine's matrix kernels on each weight format, reading weights
//! from memory on one thread and on all of them, next to the read loops of `bench llm` measured
//! in the same rounds, and in cache. Generating a token reads every weight once, so this tells
//! whether a share of the bandwidth bound that generation misses is lost in the kernels or
//! around them (attention, barriers, the steps between products).

use std::sync::Barrier;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use companion_engine::matrix::Write;
use companion_engine::{Activations, Format, Kernel, Matrix};

use super::llm::MemoryReader;
use super::median;

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Threads of the second measurement (default: the engine's, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// MB of weights per format, far more than the caches hold.
    #[arg(long, default_value_t = 256)]
    mb: usize,
    /// Bytes ahead of their weights the kernels ask for more (0: none; default: the engine's
    /// choice for this CPU).
    #[arg(long)]
    prefetch: Option<usize>,
}

/// The formats, with the row length of the matrices that hold them in the default model
/// (Int4Affine and Int6 come from K-quant blocks of 256 values).
const FORMATS: [(Format, usize); 5] = [
    (Format::Int8, 896),
    (Format::Int4, 896),
    (Format::Int5, 896),
    (Format::Int4Affine, 4864),
    (Format::Int6, 4864),
];

/// Bytes of the matrix multiplied again and again for the in-cache speed (within a core's L2).
const IN_CACHE_BYTES: usize = 384 << 10;

/// One format's speeds in one round, bytes per second.
#[derive(Debug)]
struct Round {
    one: f64,
    all: f64,
    read_one: f64,
    read_all: f64,
}

pub fn run(args: KernelsArgs) -> Result<()> {
    if args.rounds == 0 || args.mb == 0 {
        bail!("--rounds and --mb must be at least 1");
    }
    let threads = args
        .threads
        .unwrap_or_else(companion_language::compute_threads)
        .max(1);
    if let Some(bytes) = args.prefetch {
        companion_engine::matrix::set_prefetch_ahead(bytes);
    }
    let kernel = Kernel::detect();
    println!(
        "kernel: {}, asking {} bytes ahead; {} MB of weights per format; {threads} threads; {} rounds",
        kernel.as_str(),
        companion_engine::matrix::prefetch_ahead(),
        args.mb,
        args.rounds
    );
    let mut memory = MemoryReader::new(threads);
    let mut rows: Vec<(Format, f64, Vec<Round>)> = Vec::new();
    let share = (args.mb << 20) / threads;
    for (format, cols) in FORMATS {
        // One matrix per thread, so the threads share no rows and no unsafe split is needed.
        let matrices = (0..threads)
            .map(|i| synthetic(format, cols, share, i as u64))
            .collect::<Result<Vec<_>>>()?;
        let x = activations(cols);
        let in_cache = in_cache(kernel, format, cols, &x)?;
        let mut rounds = Vec::with_capacity(args.rounds);
        for _ in 0..args.rounds {
            let read_one = memory.with_threads(1).best_of(1);
            let one = multiply_each(kernel, &matrices[..1], &x);
            let read_all = memory.with_threads(threads).best_of(1);
            let all = multiply_each(kernel, &matrices, &x);
            rounds.push(Round {
                one,
                all,
                read_one,
                read_all,
            });
        }
        tracing::debug!(?format, ?rounds, "kernel rounds");
        rows.push((format, in_cache, rounds));
    }
    print_table(threads, &rows);
    Ok(())
}

/// A synthetic matrix of about `bytes` bytes.
fn synthetic(format: Format, cols: usize, bytes: usize, seed: u64) -> Result<Matrix> {
    let tile_bytes = cols / companion_engine::matrix::BLOCK * format.block_bytes();
    let tiles = (bytes / tile_bytes).max(1);
    Ok(Matrix::synthetic(
        format,
        tiles * companion_engine::matrix::TILE,
        cols,
        seed,
    )?)
}

/// One token's activations of `cols` values.
fn activations(cols: usize) -> Activations {
    let values: Vec<f32> = (0..cols)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let mut x = Activations::new(1, cols);
    x.set(0, &values);
    x
}

/// Bytes per second of one thread multiplying a matrix that stays in its cache.
fn in_cache(kernel: Kernel, format: Format, cols: usize, x: &Activations) -> Result<f64> {
    let m = synthetic(format, cols, IN_CACHE_BYTES, 99)?;
    let mut out = vec![0.0f32; m.rows()];
    m.multiply(kernel, x.rows(1), &mut out, Write::Store);
    let times = (1 << 30) / m.bytes();
    let started = Instant::now();
    for _ in 0..times {
        m.multiply(kernel, x.rows(1), &mut out, Write::Store);
    }
    std::hint::black_box(&out);
    Ok((times * m.bytes()) as f64 / started.elapsed().as_secs_f64())
}

/// Bytes per second of each matrix multiplied by one token on a thread of its own, all at once:
/// the bytes over the longest thread's time, each thread's clock started when all have started
/// (a thread's start takes tens of microseconds, as long as a few MB take to read).
fn multiply_each(kernel: Kernel, matrices: &[Matrix], x: &Activations) -> f64 {
    let bytes: usize = matrices.iter().map(Matrix::bytes).sum();
    let ready = Barrier::new(matrices.len());
    let longest = std::thread::scope(|s| {
        let threads: Vec<_> = matrices
            .iter()
            .map(|m| {
                let ready = &ready;
                s.spawn(move || {
                    let mut out = vec![0.0f32; m.rows()];
                    ready.wait();
                    let started = Instant::now();
                    m.multiply(kernel, x.rows(1), &mut out, Write::Store);
                    std::hint::black_box(&out);
                    started.elapsed()
                })
            })
            .collect();
        threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .max()
            .unwrap_or_default()
    });
    bytes as f64 / longest.as_secs_f64()
}

fn print_table(threads: usize, rows: &[(Format, f64, Vec<Round>)]) {
    let gb = |v: f64| format!("{:.1}", v / 1e9);
    let percent = |v: f64| format!("{:.0}%", 100.0 * v);
    println!(
        "format\tin_cache_1t_GB_s\tmemory_1t_GB_s\tread_1t_GB_s\tof_read_1t\tmemory_{threads}t_GB_s\tread_{threads}t_GB_s\tof_read_{threads}t"
    );
    for (format, in_cache, rounds) in rows {
        let m = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        // Each round's kernel against the read loop measured just before it.
        let one = m(|r| r.one / r.read_one);
        let all = m(|r| r.all / r.read_all);
        println!(
            "{format:?}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            gb(*in_cache),
            gb(m(|r| r.one)),
            gb(m(|r| r.read_one)),
            percent(one),
            gb(m(|r| r.all)),
            gb(m(|r| r.read_all)),
            percent(all),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_format() {
        let kernel = Kernel::detect();
        let x = activations(896);
        let matrices: Vec<Matrix> = (0..2)
            .map(|i| synthetic(Format::Int5, 896, 1 << 20, i).unwrap())
            .collect();
        assert!(
            matrices
                .iter()
                .all(|m| m.bytes() <= 1 << 20 && m.bytes() > 900 << 10)
        );
        assert!(multiply_each(kernel, &matrices, &x) > 0.0);
        for (format, cols) in FORMATS {
            let speed = in_cache(kernel, format, cols, &activations(cols)).unwrap();
            assert!(speed.is_finite() && speed > 0.0, "{format:?}");
        }
    }

    #[test]
    fn zero_rounds_is_an_error() {
        let err = run(KernelsArgs {
            threads: Some(1),
            rounds: 0,
            mb: 1,
            prefetch: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("--rounds"), "{err}");
    }
}
