//! Progress bars for `get` and `put`: one line for the whole job (bytes, rate, ETA) and one per
//! file in flight. Drawn only when stdout is a terminal; in scripts and pipes nothing is shown.

use std::io::IsTerminal as _;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    multi: MultiProgress,
    total: ProgressBar,
}

impl Progress {
    pub fn new(total_bytes: u64, files: usize) -> Self {
        let target = if std::io::stdout().is_terminal() {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let total = multi.add(ProgressBar::new(total_bytes));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:20}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix(format!("{files} file{}", if files == 1 { "" } else { "s" }));
        Progress { multi, total }
    }

    /// A line for one file, removed when the returned guard drops.
    pub fn file(&self, name: &str, size: u64) -> FileBar {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "  {wide_msg} {bytes:>10}/{total_bytes:<10} {percent:>3}%",
            )
            .expect("valid template"),
        );
        bar.set_message(name.to_string());
        FileBar {
            bar,
            total: self.total.clone(),
        }
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
    }

    /// Prints a line above the bars (or plainly when they are hidden).
    pub fn println(&self, line: &str) {
        if self.multi.is_hidden() {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }
}

pub struct FileBar {
    bar: ProgressBar,
    total: ProgressBar,
}

impl FileBar {
    /// A callback for the transfer functions: bytes done since the last call.
    pub fn counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let (bar, total) = (self.bar.clone(), self.total.clone());
        move |n| {
            bar.inc(n);
            total.inc(n);
        }
    }
}

impl Drop for FileBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
