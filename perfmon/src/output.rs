//! A run's output (`perfmon::output!`): lines cut at a byte limit, and the
//! bounded tail of them each run keeps for its report.

use std::collections::VecDeque;

use crate::record::OutputLine;

/// `line` cut to at most `max_bytes` bytes on a character boundary, and
/// whether it was cut.
pub(crate) fn cut(mut line: String, max_bytes: usize) -> (String, bool) {
    if line.len() <= max_bytes {
        return (line, false);
    }
    let mut end = max_bytes;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line.truncate(end);
    (line, true)
}

/// The last lines a run wrote, at most `max` of them; older ones are
/// counted as dropped.
#[derive(Debug, Default)]
pub(crate) struct OutputTail {
    lines: VecDeque<OutputLine>,
    dropped: u64,
}

impl OutputTail {
    /// Keeps `line`; returns whether an older line had to go to make room
    /// (or, with `max == 0`, whether this one went).
    pub(crate) fn push(&mut self, line: OutputLine, max: usize) -> bool {
        if max == 0 {
            self.dropped += 1;
            return true;
        }
        let full = self.lines.len() >= max;
        if full {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
        full
    }

    /// A copy of the kept lines, oldest first, and how many were dropped.
    pub(crate) fn parts(&self) -> (Vec<OutputLine>, u64) {
        (self.lines.iter().cloned().collect(), self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> OutputLine {
        OutputLine {
            stream: "stdout".into(),
            line: text.into(),
            cut: false,
        }
    }

    #[test]
    fn lines_are_cut_on_a_character_boundary() {
        assert_eq!(cut("hello".into(), 10), ("hello".into(), false));
        assert_eq!(cut("hello".into(), 3), ("hel".into(), true));
        // 'é' is two bytes: a cut in its middle backs off before it.
        assert_eq!(cut("héllo".into(), 2), ("h".into(), true));
    }

    #[test]
    fn the_tail_keeps_the_last_lines_and_counts_the_rest() {
        let mut tail = OutputTail::default();
        for i in 0..5 {
            tail.push(line(&i.to_string()), 3);
        }
        let (lines, dropped) = tail.parts();
        assert_eq!(
            lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
        assert_eq!(dropped, 2);
    }
}
