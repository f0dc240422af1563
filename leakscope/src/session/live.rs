//! The live view: when stdout is a terminal and the reports are text, each interval report
//! replaces the previous one on the terminal's alternate screen (a `top`-like view: the
//! growth table and the tracing line with its overhead estimate, cut to the window); the
//! final report goes to the normal screen, where it stays in the scrollback. JSON, or
//! stdout piped or redirected, stays plain lines. crossterm: terminal size, alternate
//! screen, cursor; the screen is restored on every exit path (`Drop`).
use anyhow::{Context, Result};
use crossterm::{cursor, execute, queue, style, terminal};
use std::io::{IsTerminal, Write};

pub struct LiveView {
    enabled: bool,
    active: bool,
}

impl LiveView {
    /// On when `text` reports go to a terminal.
    pub fn new(text: bool) -> LiveView {
        LiveView {
            enabled: text && std::io::stdout().is_terminal(),
            active: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Draws `report` over the previous one, with a footer line.
    pub fn show(&mut self, report: &str, footer: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if !self.active {
            execute!(out, terminal::EnterAlternateScreen, cursor::Hide)
                .context("switching to the terminal's alternate screen")?;
            self.active = true;
        }
        let (cols, rows) = terminal::size().unwrap_or((100, 40));
        let (cols, rows) = (cols.max(20) as usize, rows.max(3) as usize);
        queue!(
            out,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        for (i, line) in report.lines().take(rows - 1).enumerate() {
            let cut: String = line.chars().take(cols).collect();
            queue!(out, cursor::MoveTo(0, i as u16), style::Print(cut))?;
        }
        let footer: String = footer.chars().take(cols).collect();
        queue!(
            out,
            cursor::MoveTo(0, (rows - 1) as u16),
            style::Print(footer)
        )?;
        out.flush().context("drawing the live view")?;
        Ok(())
    }

    /// Back to the normal screen (before the final report, and on any exit).
    pub fn leave(&mut self) {
        if self.active {
            let _ = execute!(
                std::io::stdout(),
                cursor::Show,
                terminal::LeaveAlternateScreen
            );
            self.active = false;
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.leave();
    }
}
