//! A child process measured from outside: wall time, peak resident memory and its output.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What one run of a command gave.
#[derive(Debug)]
pub struct ChildRun {
    /// Standard output, line by line.
    pub lines: Vec<String>,
    /// From spawn to exit.
    pub wall: Duration,
    /// Peak resident set size of the process, in bytes (the kernel's `ru_maxrss`).
    pub peak_rss: u64,
}

/// Runs `command` to its end. A non-zero exit is an error that carries the end of its stderr.
pub fn run_measured(command: &mut Command) -> Result<ChildRun> {
    let program = format!("{:?}", command.get_program());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let out = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .collect::<Vec<_>>()
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (status, usage) = wait4(child.id())?;
    let wall = started.elapsed();
    let lines = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{program} failed (wait status {status}):\n{}",
            last_lines(&stderr, 15)
        );
    }
    Ok(ChildRun {
        lines,
        wall,
        peak_rss: (usage.ru_maxrss.max(0) as u64) * 1024,
    })
}

/// The last `n` lines of a process's error output, which say why it failed.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits for the child and returns its wait status and resource usage (`std` reaps children
/// without their `rusage`).
fn wait4(pid: u32) -> Result<(i32, libc::rusage)> {
    let pid = libc::pid_t::try_from(pid).context("child pid out of range")?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 writes it and the status for our own child,
    // which nothing else waits for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for the child process");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_memory() {
        let run = run_measured(Command::new("sh").args(["-c", "echo one; echo two"])).unwrap();
        assert_eq!(run.lines, vec!["one", "two"]);
        assert!(run.peak_rss > 0);
    }

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_stderr() {
        let err = run_measured(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("boom"), "{err}");
    }
}
