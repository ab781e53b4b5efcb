//! The text a device receives: commands and `#` comments, each line ending in CRLF.

#[derive(Debug, Default, Clone)]
pub struct Script {
    text: String,
    /// Comments worth keeping in the device's log on the status page.
    pub notes: Vec<String>,
    /// Where [`Script::comment_args`] formats.
    scratch: String,
}

impl Script {
    pub fn new() -> Script {
        // a steady answer is one to two KB: grown once or not at all instead of doubling
        // from nothing
        Script { text: String::with_capacity(2048), notes: Vec::new(), scratch: String::new() }
    }

    /// A line for people reading the answer; devices ignore it.
    pub fn comment(&mut self, text: impl AsRef<str>) {
        self.comment_pieces(&[text.as_ref()]);
    }

    /// [`Script::comment`] of formatted text, formatted into a buffer the script keeps, so
    /// the many comments of every answer cost no allocation of their own.
    pub fn comment_args(&mut self, args: std::fmt::Arguments) {
        use std::fmt::Write as _;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let _ = scratch.write_fmt(args);
        self.comment(&scratch);
        self.scratch = scratch;
    }

    /// [`Script::comment`] of text given in pieces, pushed straight into the answer: the
    /// comments are most of a steady poll's answer, and formatting them through `core::fmt`
    /// cost about a tenth of the poll's instructions. A text of several lines (LF, CRLF) is a
    /// comment line per line.
    pub fn comment_pieces(&mut self, pieces: &[&str]) {
        // one line, as nearly every comment of an answer is: the pieces go in as they are, and
        // one search over all of them (not one per piece: most are a few bytes) confirms it
        let start = self.text.len();
        self.text.reserve(4 + pieces.iter().map(|piece| piece.len()).sum::<usize>());
        self.text.push_str("# ");
        for piece in pieces {
            self.text.push_str(piece);
        }
        if memchr::memchr2(b'\n', b'\r', &self.text.as_bytes()[start + 2..]).is_none() {
            self.text.push_str("\r\n");
            return;
        }
        // several lines: what was pushed is the text to split
        let text = self.text.split_off(start + 2);
        self.text.truncate(start);
        for line in text.split('\n') {
            self.text.push_str("# ");
            self.text.push_str(line.trim_end_matches('\r'));
            self.text.push_str("\r\n");
        }
    }

    /// A comment that is also kept in the device's log.
    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        self.comment(&text);
        self.notes.push(text);
    }

    pub fn command(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push_str("\r\n");
    }

    pub fn commands<I: IntoIterator<Item = S>, S: AsRef<str>>(&mut self, lines: I) {
        for line in lines {
            self.command(line);
        }
    }

    pub fn blank(&mut self) {
        self.text.push_str("\r\n");
    }

    /// A snippet file's lines as they are, each ended with CRLF.
    pub fn raw_lines(&mut self, content: &[u8]) {
        let text = String::from_utf8_lossy(content);
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        for line in lines {
            self.command(line.trim_end_matches('\r'));
        }
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::Script;

    #[test]
    fn a_comment_is_a_hash_line_per_line_of_its_text() {
        let mut script = Script::new();
        script.comment("one line");
        script.comment("two\nlines\r\nhere\r");
        script.comment("");
        script.comment_args(format_args!("{} {}", "formatted", 1));
        assert_eq!(script.into_text(), "# one line\r\n# two\r\n# lines\r\n# here\r\n# \r\n# formatted 1\r\n");
    }

    #[test]
    fn a_comment_in_pieces_is_the_comment_of_their_text() {
        let cases: [(&[&str], &str); 5] = [
            (&["one ", "line"], "# one line\r\n"),
            (&["two\nli", "nes\r", "\nhere\r"], "# two\r\n# lines\r\n# here\r\n"),
            (&[], "# \r\n"),
            (&["", "a\rb"], "# a\rb\r\n"),
            (&["end\n"], "# end\r\n# \r\n"),
        ];
        for (pieces, expected) in cases {
            let mut script = Script::new();
            script.comment_pieces(pieces);
            assert_eq!(script.into_text(), expected, "{pieces:?}");
        }
    }
}
