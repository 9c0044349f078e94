//! What conclave tells the person at the terminal, and the rule for where each kind of output
//! goes. The command-line code (`cli`, `batch`, `server`, `probe`) writes to the terminal only
//! in these three ways:
//!
//! * **stdout carries results only**: the final answer, the JSON result lines of `server` and
//!   `batch`, `probe`'s event lines, the `sessions` table. They are written with
//!   `print!`/`println!` where they are produced, since stdout is what scripts read.
//! * **stderr lines for the person** go through this module: [`note!`] (what is happening that
//!   they need to see at the default verbosity: an address to open, the summary of a session,
//!   the interactive prompt, what a `server` or `batch` found and is doing, why a run stopped),
//!   [`warning!`] (`warning: ...`, something in their input they should fix) and [`error!`]
//!   (`error: ...`, why the command failed, once, before it exits). The text is the same as
//!   the direct `eprintln!` it replaces, and the tests read it.
//! * **everything else is a log**: `tracing` (`info!`, `warn!`, ...), shown by `-v`/`RUST_LOG`
//!   and exported with the traces. Library code below the command line (sessions, the
//!   coordinator, the cluster) logs and never writes to the terminal itself.
//!
//! A line that only tells what the program did internally is a log, not a note. Writes here
//! never panic: a closed stderr (a pipe whose reader went away) loses the line, not the run,
//! whose results are on stdout and in the session directory.

use std::fmt;
use std::io::Write;

/// A line on stderr for the person at the terminal (see the module docs), formatted like
/// `eprintln!`.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::console::write_line(::std::format_args!($($arg)*))
    };
}

/// `warning: ` and a line on stderr: something in the user's input they should fix.
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::console::write_line(::std::format_args!("warning: {}", ::std::format_args!($($arg)*)))
    };
}

/// `error: ` and a line on stderr: why the command failed, said once before it exits.
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::console::write_line(::std::format_args!("error: {}", ::std::format_args!($($arg)*)))
    };
}

pub(crate) use {error, note, warning};

/// Writes one line to stderr; a failed write is ignored (see the module docs).
#[doc(hidden)]
pub fn write_line(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes `text` to stderr without a newline and flushes it: the interactive prompt.
pub fn prompt(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}
