//! The escaping of the tab-separated state files (the sync manifest, its journal, the layer
//! cache): a path may hold any character but NUL, so backslash, tab and newline are written as
//! `\\`, `\t` and `\n`, and a line always splits on its tabs. Both the writers and the readers
//! use these two functions, so the formats cannot drift apart. Pure string functions: no I/O.

/// Appends `s` to `out`, escaped.
pub fn esc(s: &str, out: &mut String) {
    if !s.bytes().any(|b| b == b'\\' || b == b'\t' || b == b'\n') {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The text `esc` wrote.
pub fn unesc(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaping_round_trips_every_separator() {
        for s in [
            "plain/path.php",
            "tab\there",
            "new\nline",
            "back\\slash\\t",
            "",
        ] {
            let mut out = String::new();
            super::esc(s, &mut out);
            assert!(!out.contains('\t') && !out.contains('\n'), "{out:?}");
            assert_eq!(super::unesc(&out), s);
        }
    }
}
