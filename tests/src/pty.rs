//! A real pseudo-terminal for driving the terminal UI: `conclave` runs with the pty as its
//! stdin, stdout and stderr (and as its controlling terminal), a thread feeds everything it
//! writes into a `vt100` terminal emulator, and the test reads that emulator's screen —
//! what a person would see. [`screenshot_png`] paints such a screen (cells, colours) into a
//! PNG with an 8×8 bitmap font, for the README.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process on a pseudo-terminal of a given size, and the emulated screen.
pub struct PtySession {
    pub child: Child,
    master: File,
    parser: Arc<Mutex<vt100::Parser>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl PtySession {
    /// Starts `command` on a new pty of `rows`×`cols` (TERM=xterm-256color).
    pub fn spawn(command: &mut Command, rows: u16, cols: u16) -> anyhow::Result<PtySession> {
        let mut master = -1;
        let mut slave = -1;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two new descriptors into the out-pointers; name and termios
        // may be null, the winsize points at a live value.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        if rc != 0 {
            bail!("openpty: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened by openpty and are owned by nobody else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdin = slave.try_clone()?;
        let stdout = slave.try_clone()?;
        // SAFETY: the closure only makes async-signal-safe calls (setsid, ioctl) between fork
        // and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(slave))
            .spawn()
            .context("cannot start the command on the pty")?;
        // The command keeps its stdio until told otherwise: drop our copies of the slave so
        // the reader sees the end when the child exits.
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let (Some(rows), Some(cols)) = (
            std::num::NonZeroU16::new(rows),
            std::num::NonZeroU16::new(cols),
        ) else {
            bail!("a terminal needs at least one row and one column");
        };
        let parser = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let mut reading = master.try_clone()?;
        let feed = parser.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once the child and every copy of the slave are gone.
            while let Ok(n) = reading.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut parser) = feed.lock() {
                    parser.process(&buf[..n]);
                }
            }
        });
        Ok(PtySession {
            child,
            master,
            parser,
            reader: Some(reader),
        })
    }

    /// Types bytes (keys) into the terminal.
    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.master.write_all(bytes)?;
        self.master.flush()?;
        Ok(())
    }

    /// The screen's text now.
    pub fn contents(&self) -> String {
        self.parser
            .lock()
            .map(|p| p.screen().contents())
            .unwrap_or_default()
    }

    /// Runs `probe` on the screen until it says yes, for at most `deadline`.
    pub fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        probe: impl Fn(&vt100::Screen) -> bool,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(parser) = self.parser.lock()
                && probe(parser.screen())
            {
                return Ok(());
            }
            if started.elapsed() > deadline {
                bail!(
                    "waited {deadline:?} for {what}; the screen shows:\n{}",
                    self.contents()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A copy of the screen.
    pub fn screen(&self) -> Option<vt100::Screen> {
        self.parser.lock().ok().map(|p| p.screen().clone())
    }

    /// Waits for the child to exit (killing it after `deadline`) and for the last output.
    pub fn wait(mut self, deadline: Duration) -> anyhow::Result<(Option<i32>, vt100::Screen)> {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if started.elapsed() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "the command did not exit within {deadline:?}:\n{}",
                    self.contents()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader stops at EIO when the slave is closed; bounded anyway.
        let reader = self.reader.take();
        let started = Instant::now();
        if let Some(reader) = reader {
            while !reader.is_finished() && started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.master.as_raw_fd();
        let screen = self.screen().context("the emulator lock is poisoned")?;
        Ok((status.code(), screen))
    }
}

/// The xterm colour of a cell, as RGB.
fn rgb(color: vt100::Color, default: [u8; 3]) -> [u8; 3] {
    const BASE: [[u8; 3]; 16] = [
        [0, 0, 0],
        [205, 49, 49],
        [13, 188, 121],
        [229, 229, 16],
        [36, 114, 200],
        [188, 63, 188],
        [17, 168, 205],
        [204, 204, 204],
        [102, 102, 102],
        [241, 76, 76],
        [35, 209, 139],
        [245, 245, 67],
        [59, 142, 234],
        [214, 112, 214],
        [41, 184, 219],
        [242, 242, 242],
    ];
    match color {
        vt100::Color::Default => default,
        vt100::Color::Idx(i) if i < 16 => BASE[usize::from(i)],
        vt100::Color::Idx(i) if i >= 232 => {
            let v = 8 + (i - 232) * 10;
            [v, v, v]
        }
        vt100::Color::Idx(i) => {
            let i = i - 16;
            let level = |x: u8| if x == 0 { 0 } else { 55 + x * 40 };
            [level(i / 36), level((i / 6) % 6), level(i % 6)]
        }
        vt100::Color::Rgb(r, g, b) => [r, g, b],
    }
}

/// The 8×8 glyph of a character (box drawing and blocks included), if the font has one.
fn glyph(c: char) -> Option<[u8; 8]> {
    use font8x8::UnicodeFonts;
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::BOX_FONTS.get(c))
        .or_else(|| font8x8::BLOCK_FONTS.get(c))
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| match c {
            // Heavy box lines (the focused pane) drawn with the light ones.
            '━' => font8x8::BOX_FONTS.get('─'),
            '┃' => font8x8::BOX_FONTS.get('│'),
            '┏' => font8x8::BOX_FONTS.get('┌'),
            '┓' => font8x8::BOX_FONTS.get('┐'),
            '┗' => font8x8::BOX_FONTS.get('└'),
            '┛' => font8x8::BOX_FONTS.get('┘'),
            '…' => Some([0, 0, 0, 0, 0, 0, 0b01001001, 0]),
            '·' => Some([0, 0, 0, 0b00011000, 0b00011000, 0, 0, 0]),
            // Symbols the font lacks, drawn as the nearest ASCII.
            '▶' | '→' => font8x8::BASIC_FONTS.get('>'),
            '←' => font8x8::BASIC_FONTS.get('<'),
            '↑' => font8x8::BASIC_FONTS.get('^'),
            '↓' | '✔' => font8x8::BASIC_FONTS.get('v'),
            '✚' => font8x8::BASIC_FONTS.get('+'),
            '✗' => font8x8::BASIC_FONTS.get('x'),
            '↺' | '↳' => font8x8::BASIC_FONTS.get('~'),
            '■' => font8x8::BLOCK_FONTS.get('█'),
            '▸' => font8x8::BASIC_FONTS.get('>'),
            '○' => font8x8::BASIC_FONTS.get('o'),
            '⚙' => font8x8::BASIC_FONTS.get('*'),
            _ => None,
        })
}

/// Paints a terminal screen into a PNG: each cell 8×16 pixels (the 8×8 glyph doubled
/// vertically), with its foreground and background colours, bold as brighter.
pub fn screenshot_png(screen: &vt100::Screen, path: &Path) -> anyhow::Result<()> {
    const CELL_W: usize = 8;
    const CELL_H: usize = 16;
    let (rows, cols) = screen.size();
    let (rows, cols) = (rows.get(), cols.get());
    let (width, height) = (usize::from(cols) * CELL_W, usize::from(rows) * CELL_H);
    let mut pixels = vec![0u8; width * height * 3];
    let default_fg = [204, 204, 204];
    let default_bg = [24, 24, 24];
    for row in 0..rows {
        for col in 0..cols {
            let Some(cell) = screen.cell(row, col) else {
                continue;
            };
            let mut fg = rgb(cell.fgcolor(), default_fg);
            let mut bg = rgb(cell.bgcolor(), default_bg);
            if cell.inverse() {
                std::mem::swap(&mut fg, &mut bg);
            }
            if cell.bold() && cell.fgcolor() == vt100::Color::Default {
                fg = [255, 255, 255];
            }
            let bits = cell.contents().chars().next().and_then(glyph);
            for y in 0..CELL_H {
                for x in 0..CELL_W {
                    let on = bits.is_some_and(|b| b[y / 2] >> x & 1 == 1);
                    let color = if on { fg } else { bg };
                    let px = usize::from(row) * CELL_H + y;
                    let py = usize::from(col) * CELL_W + x;
                    let at = (px * width + py) * 3;
                    pixels[at..at + 3].copy_from_slice(&color);
                }
            }
        }
    }
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(())
}
