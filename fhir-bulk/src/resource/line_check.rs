//! The fast path of [`check_line`](super::check_line): a validating scan of one NDJSON line
//! that builds nothing, allocates nothing (unless a top-level key is escaped) and runs over
//! string contents eight bytes at a time.
//!
//! It accepts exactly what the serde_json check accepts (the property test below compares
//! the two on generated and mutated lines), with one addition: containers nest at most
//! [`MAX_DEPTH`] deep, serde_json's own limit for typed parsing (its skipping of ignored
//! values has none). It takes any bytes, but says whether they are valid UTF-8 only when it
//! reports a valid line without bytes of 0x80 or more (ASCII): outside strings only ASCII is
//! valid JSON, and inside strings every byte of 0x20 and up is content, so the caller
//! validates UTF-8 when the line is not ASCII ([`scan_with_ascii`]).
//!
//! It says only whether the line is good; the slow path explains a bad one (the serde_json
//! message, with its column).

/// The deepest nesting accepted, the top-level object included: serde_json's recursion limit
/// (128 containers fail, 127 pass).
pub(crate) const MAX_DEPTH: usize = 127;

/// Where the first top-level `resourceType` value is: the bytes between its quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// First byte after the opening quote.
    pub(crate) start: usize,
    /// The closing quote.
    pub(crate) end: usize,
    /// The string holds a backslash escape (it must be decoded, and its escapes validated).
    pub(crate) escaped: bool,
}

/// What the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// One whole JSON object and nothing after it but white space; the span of its first
    /// top-level `resourceType` value (a string), if it has one.
    Valid(Option<Span>),
    /// Not one whole JSON object, or a top-level `resourceType` that is not a string, or a
    /// top-level key or `resourceType` value whose escapes do not decode (a lone surrogate).
    Invalid,
    /// Nested deeper than [`MAX_DEPTH`] (and valid up to there).
    TooDeep,
}

enum Fail {
    Invalid,
    TooDeep,
}

type Step<T = ()> = Result<T, Fail>;

/// Scans one line (valid UTF-8, without its line end).
#[cfg(test)]
pub(crate) fn scan(line: &[u8]) -> Scan {
    scan_with_ascii(line).0
}

/// [`scan`], of any bytes, and whether the line is ASCII when it is valid: on a valid line
/// the scan has looked at every byte (outside strings only ASCII is valid JSON; inside them
/// every byte of 0x80 and up is noted), so a valid line without one needs no UTF-8 pass. On
/// an invalid line the flag means nothing.
pub(crate) fn scan_with_ascii(line: &[u8]) -> (Scan, bool) {
    let mut scanner = Scanner {
        b: line,
        i: 0,
        high: 0,
    };
    let scan = match scanner.line() {
        Ok(found) => Scan::Valid(found),
        Err(Fail::Invalid) => Scan::Invalid,
        Err(Fail::TooDeep) => Scan::TooDeep,
    };
    (scan, scanner.high == 0)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// A mask with the high bit set in (at least) the lowest byte of `word` that ends a plain
/// string run: a quote, a backslash or a control character below 0x20. Zero when none does.
/// The lowest flagged byte is always a real one (a borrow only flags bytes above a real
/// match), which is all the caller uses.
#[inline(always)]
fn string_stops(word: u64) -> u64 {
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let quote = zero_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    quote | backslash | control
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Non-zero once a string held a byte of 0x80 or more (or a word around one).
    high: u64,
}

/// Plain string bytes read a word at a time before the rest of a string is left to memchr.
const SHORT_STRING: usize = 32;

/// Whether no byte of `bytes` is below 0x20: one pass, 32 bytes at a time (vectorised).
fn control_free(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(32);
    let clean = chunks
        .by_ref()
        .all(|chunk| chunk.iter().fold(u8::MAX, |low, &b| low.min(b)) >= 0x20);
    clean && chunks.remainder().iter().all(|&b| b >= 0x20)
}

/// Whether a byte of `bytes` is 0x80 or more: one pass (vectorised).
fn beyond_ascii(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |all, &b| all | b) >= 0x80
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, byte: u8) -> Step {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(Fail::Invalid)
        }
    }

    /// The whole line: white space, one object, white space.
    fn line(&mut self) -> Step<Option<Span>> {
        self.ws();
        self.eat(b'{')?;
        let mut found = None;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                self.eat(b'"')?;
                let key = self.string()?;
                let resource_type = self.top_level_key(key)? && found.is_none();
                self.ws();
                self.eat(b':')?;
                self.ws();
                if resource_type {
                    // The first resourceType must be a string (a later one is skipped).
                    self.eat(b'"')?;
                    let value = self.string()?;
                    if value.escaped {
                        // Decoded by the serde check, which validates its escapes fully.
                        self.decodes(value)?;
                    }
                    found = Some(value);
                } else {
                    self.value(1)?;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Fail::Invalid),
                }
            }
        }
        self.ws();
        if self.i == self.b.len() {
            Ok(found)
        } else {
            Err(Fail::Invalid)
        }
    }

    /// Whether a top-level key is `resourceType`. Top-level keys are decoded by the serde
    /// check, which validates their escapes fully (no lone surrogates), so an escaped one is
    /// decoded here too (rare: servers do not escape key names).
    fn top_level_key(&self, key: Span) -> Step<bool> {
        let raw = &self.b[key.start..key.end];
        if !key.escaped {
            return Ok(raw == b"resourceType");
        }
        Ok(self.decodes(key)? == "resourceType")
    }

    /// An escaped string decoded as serde_json decodes a key or a `&str` (no lone surrogates).
    fn decodes(&self, string: Span) -> Step<String> {
        let quoted = &self.b[string.start - 1..=string.end];
        serde_json::from_slice::<String>(quoted).map_err(|_| Fail::Invalid)
    }

    /// A string's contents after its opening quote, through its closing quote.
    #[inline(always)]
    fn string(&mut self) -> Step<Span> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let mut escaped = false;
        let mut high = 0u64;
        loop {
            // Plain bytes, eight at a time, up to the first that needs a look. A long run
            // in a line without control bytes is left to memchr's SIMD search for the next
            // quote or backslash.
            let run = i;
            while let Some(chunk) = b.get(i..i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let word = u64::from_le_bytes(word);
                high |= word & HIGHS;
                let stops = string_stops(word);
                if stops != 0 {
                    i += (stops.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
                if i - run >= SHORT_STRING {
                    // Everything before the next quote or backslash is the string's own;
                    // a control byte there is invalid.
                    let end = memchr::memchr2(b'"', b'\\', &b[i..]).map_or(b.len(), |at| i + at);
                    let run = &b[i..end];
                    if !control_free(run) {
                        return Err(Fail::Invalid);
                    }
                    high |= u64::from(beyond_ascii(run));
                    i = end;
                    break;
                }
            }
            match b.get(i) {
                None => return Err(Fail::Invalid),
                Some(b'"') => {
                    self.i = i + 1;
                    self.high |= high;
                    return Ok(Span {
                        start,
                        end: i,
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u') => {
                            let hex = b.get(i + 2..i + 6).ok_or(Fail::Invalid)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(Fail::Invalid);
                            }
                            i += 6;
                        }
                        _ => return Err(Fail::Invalid),
                    }
                }
                Some(&c) if c < 0x20 => return Err(Fail::Invalid),
                Some(&c) => {
                    high |= u64::from(c & 0x80);
                    i += 1;
                }
            }
        }
    }

    /// A number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    #[inline(always)]
    fn number(&mut self) -> Step {
        let b = self.b;
        let mut i = self.i;
        let digits = |mut i: usize| {
            while let Some(b'0'..=b'9') = b.get(i) {
                i += 1;
            }
            i
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if let Some(b'0'..=b'9') = b.get(i) {
                    return Err(Fail::Invalid);
                }
            }
            Some(b'1'..=b'9') => i = digits(i + 1),
            _ => return Err(Fail::Invalid),
        }
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                return Err(Fail::Invalid);
            }
            i = end;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits(i);
            if end == i {
                return Err(Fail::Invalid);
            }
            i = end;
        }
        self.i = i;
        Ok(())
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Step {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Fail::Invalid)
        }
    }

    /// One value (white space before it already skipped) and everything inside it, inside
    /// `outer` containers. Iterative: the open containers are bits of one `u128` (1 for an
    /// object), so nesting costs no stack.
    fn value(&mut self, outer: usize) -> Step {
        let mut open: u128 = 0;
        let mut depth = 0usize;
        loop {
            // At a value.
            let mut opened = false;
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    self.string()?;
                }
                Some(bracket @ (b'{' | b'[')) => {
                    self.i += 1;
                    depth += 1;
                    if outer + depth > MAX_DEPTH {
                        return Err(Fail::TooDeep);
                    }
                    let object = bracket == b'{';
                    open = (open << 1) | u128::from(object);
                    self.ws();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                        depth -= 1;
                        open >>= 1;
                    } else {
                        opened = true;
                        if object {
                            self.member_key()?;
                        }
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(Fail::Invalid),
            }
            if opened {
                continue;
            }
            // After a value: commas and closing brackets, until the next value or the end.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.ws();
                let object = open & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        self.ws();
                        if object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => {}
                    Some(b']') if !object => {}
                    _ => return Err(Fail::Invalid),
                }
                self.i += 1;
                depth -= 1;
                open >>= 1;
            }
        }
    }

    /// `"key"`, white space, `:`, white space (white space before it already skipped).
    #[inline(always)]
    fn member_key(&mut self) -> Step {
        self.eat(b'"')?;
        self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(line: &str) -> bool {
        matches!(scan(line.as_bytes()), Scan::Valid(_))
    }

    #[test]
    fn stops_flag_the_first_special_byte() {
        let word = |s: &[u8; 8]| string_stops(u64::from_le_bytes(*s));
        assert_eq!(word(b"abcdefgh"), 0);
        assert_eq!(word(b"\xc3\xa9\xff\x7f \x20~}"), 0);
        for (text, at) in [
            (b"abc\"efgh", 3),
            (b"\\bcdefgh", 0),
            (b"abcdefg\x1f", 7),
            (b"ab\x00\"\\fgh", 2),
            (b"\x01\x01\x01\x01\x01\x01\x01\x01", 0),
        ] {
            assert_eq!(word(text).trailing_zeros() / 8, at, "{text:?}");
        }
    }

    #[test]
    fn accepts_objects_and_finds_resource_type() {
        let line = br#" {"a":[1,-0.5e+3,{"b":"c\u00e9\n"},[],{}],"resourceType":"Observation","t":true,"f":false,"n":null} "#;
        let Scan::Valid(Some(span)) = scan(line) else {
            panic!("rejected")
        };
        assert_eq!(&line[span.start..span.end], b"Observation");
        assert!(!span.escaped);
        assert_eq!(scan(b"{}"), Scan::Valid(None));
        assert!(valid("{\"a\":\"\u{1F600} \u{7f}\"}"));
        // Only the first resourceType counts; a later one may be anything.
        let line = br#"{"resourceType":"A\u0042","resourceType":5}"#;
        let Scan::Valid(Some(span)) = scan(line) else {
            panic!("rejected")
        };
        assert!(span.escaped);
        assert_eq!(&line[span.start..span.end], br"A\u0042");
        // A nested resourceType is not the line's.
        assert_eq!(
            scan(br#"{"contained":[{"resourceType":"X"}]}"#),
            Scan::Valid(None)
        );
    }

    #[test]
    fn rejects_what_is_not_one_whole_object() {
        for bad in [
            "",
            " ",
            "[1]",
            "\"s\"",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{\"a\":1}{}",
            "{\"a\":1} x",
            "{\"a\":1},",
            "{\"a\":[1,]}",
            "{\"a\":[1 2]}",
            "{\"a\":[}",
            "{\"a\":{]}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":1e+}",
            "{\"a\":-}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":nul}",
            "{\"a\":truex}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"tab\there\"}",
            "{\"a\":\"\u{0}\"}",
            "{\"a\":\"cut",
            "{\"a\":\"cut\\",
            "{1:2}",
            "{\"resourceType\":5}",
            "{\"resourceType\":null}",
            "\u{c}{}",
            "{\"a\":1}\u{c}",
        ] {
            assert_eq!(scan(bad.as_bytes()), Scan::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn escaped_top_level_keys_are_decoded_and_validated() {
        let line = br#"{"resourc\u0065Type":"Patient"}"#;
        assert!(matches!(scan(line), Scan::Valid(Some(_))));
        // A lone surrogate: skipped in a nested key, refused in a top-level one (as serde).
        assert!(valid(r#"{"a":{"\uD800":1}}"#));
        assert_eq!(scan(br#"{"\uD800":1}"#), Scan::Invalid);
    }

    #[test]
    fn nesting_is_limited_to_serde_jsons_depth() {
        let nested = |levels: usize| {
            // The top-level object plus `levels - 1` arrays.
            format!(
                "{{\"a\":{}1{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            )
        };
        assert!(valid(&nested(MAX_DEPTH)));
        assert_eq!(scan(nested(MAX_DEPTH + 1).as_bytes()), Scan::TooDeep);
        assert_eq!(scan(nested(10_000).as_bytes()), Scan::TooDeep);
        // Brackets inside strings do not nest.
        assert!(valid(&format!("{{\"a\":\"{}\"}}", "[{".repeat(500))));
        // Objects nest too.
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(scan(objects.as_bytes()), Scan::TooDeep);
    }

    #[test]
    fn valid_lines_say_whether_they_are_ascii() {
        let ascii = |line: &str| match scan_with_ascii(line.as_bytes()) {
            (Scan::Valid(_), ascii) => ascii,
            (other, _) => panic!("{other:?} on {line}"),
        };
        let long = "y".repeat(100);
        assert!(ascii(
            r#"{"resourceType":"Patient","name":"Jo","n":[1,true,null]}"#
        ));
        assert!(ascii(&format!(r#"{{"text":"{long}\u00e9\n"}}"#)));
        // A byte of 0x80 or more in a word, in a string's last bytes, in a long run, in a key.
        assert!(!ascii(r#"{"name":"Zoé Martin-Dupont"}"#));
        assert!(!ascii(r#"{"n":"é"}"#));
        assert!(!ascii(&format!(r#"{{"text":"{long}é{long}"}}"#)));
        assert!(!ascii(&format!(r#"{{"text":"{long}😀"}}"#)));
        assert!(!ascii(r#"{"é":1}"#));
        // Not UTF-8 in a string: the scan accepts the bytes, and check_line refuses them.
        let mut bad = format!(r#"{{"text":"{long}x"}}"#).into_bytes();
        let at = bad.len() - 4;
        bad[at] = 0xff;
        assert!(matches!(scan_with_ascii(&bad), (Scan::Valid(_), false)));
        assert!(matches!(
            super::super::check_line(&bad),
            Err(super::super::ParseError::InvalidUtf8(_))
        ));
    }

    #[test]
    fn long_strings_are_searched_to_their_end_and_control_bytes_refused() {
        let long = "x".repeat(100);
        assert!(valid(&format!(r#"{{"a":"{long}"}}"#)));
        assert!(valid(&format!(r#"{{"a":"{long}\"{long}\\","b":1}}"#)));
        assert!(valid(&format!("{{\t\"a\":\"{long}\"\r}}")));
        // A tab, a newline or any byte below 0x20 far into a long string.
        for control in ['\t', '\n', '\u{1}', '\u{1f}'] {
            assert!(
                !valid(&format!(r#"{{"a":"{long}{control}{long}"}}"#)),
                "{control:?}"
            );
        }
        // Tabs as white space, and a control byte inside a long string after them.
        assert!(!valid(&format!("{{\t\"a\":\"{long}\u{1}\"}}")));
        // Unterminated, and a bad escape far in.
        assert!(!valid(&format!(r#"{{"a":"{long}"#)));
        assert!(!valid(&format!(r#"{{"a":"{long}\x"}}"#)));
        assert_eq!(
            scan(format!(r#"{{"resourceType":"{long}"}}"#).as_bytes()),
            Scan::Valid(Some(Span {
                start: 17,
                end: 117,
                escaped: false
            }))
        );
    }

    mod against_serde {
        use super::super::super::{ParseError, check_line, check_line_serde};
        use proptest::prelude::*;

        /// White space, mostly none.
        fn ws() -> impl Strategy<Value = String> {
            prop_oneof![4 => Just(String::new()), 1 => "[ \t\r\n]{1,2}"]
        }

        /// A string literal's contents: plain text, multi-byte characters, every escape
        /// (surrogates and lone surrogates included).
        fn string_body() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    6 => "[a-zA-Z0-9 ]{1,12}",
                    // Long plain runs: past the word-at-a-time start, left to memchr.
                    1 => "[a-zA-Z0-9 ]{17,60}",
                    1 => "[é😀\u{7f}\u{80}\u{7ff}\u{ffff}]",
                    1 => "\\\\[\"\\\\/bfnrt]",
                    1 => "\\\\u[0-9a-fA-F]{4}",
                    1 => Just("\\uD83D\\uDE00".to_owned()),
                    1 => "\\\\u[dD][89abAB][0-9a-f]{2}",
                    1 => "[\\[\\]{}:,]",
                    // Rarely, a defect: a bad escape, a short \u, a raw control character.
                    1 => prop_oneof![
                        6 => Just(String::new()),
                        1 => "\\\\[xu0aU'\\[]",
                        1 => "\\\\u[0-9a-gA-G]{0,4}",
                        1 => "[\u{0}\u{1f}\t\n]",
                    ],
                ],
                0..6,
            )
            .prop_map(|parts| parts.concat())
        }

        fn string() -> impl Strategy<Value = String> {
            string_body().prop_map(|body| format!("\"{body}\""))
        }

        /// Numbers, mostly valid; the looser second form also makes leading zeros, a dot or
        /// an exponent without digits, a plus sign.
        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                2 => "-?(0|[1-9][0-9]{0,6})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
                1 => "[-+]?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            ]
        }

        /// Any JSON value, as text.
        fn value() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                string(),
                number(),
                Just("true".to_owned()),
                Just("false".to_owned()),
                Just("null".to_owned()),
                // Rarely, a defect.
                proptest::sample::select(vec!["tru", "nulll", "f", "True", "-", "\"", ""])
                    .prop_map(str::to_owned),
            ];
            leaf.prop_recursive(4, 24, 5, |inner| {
                prop_oneof![
                    proptest::collection::vec((ws(), inner.clone(), ws()), 0..5).prop_map(
                        |items| {
                            let items: Vec<String> =
                                items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                            format!("[{}]", items.join(","))
                        }
                    ),
                    proptest::collection::vec((string(), ws(), inner), 0..5).prop_map(|members| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(k, w, v)| format!("{k}{w}:{w}{v}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }),
                ]
            })
        }

        /// A line: one object whose top-level members may include `resourceType` (plain,
        /// escaped, repeated, or not a string).
        fn line() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                3 => string(),
                2 => Just("\"resourceType\"".to_owned()),
                1 => Just("\"resourc\\u0065Type\"".to_owned()),
                1 => Just("\"resourceTyp\"".to_owned()),
            ];
            let member_value = prop_oneof![3 => string(), 2 => value()];
            (
                ws(),
                proptest::collection::vec((key, ws(), member_value), 0..6),
                ws(),
            )
                .prop_map(|(before, members, after)| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, w, v)| format!("{k}{w}:{w}{v}"))
                        .collect();
                    format!("{before}{{{}}}{after}", members.join(","))
                })
        }

        /// A change that may break the line: a cut, a byte replaced, inserted or removed.
        #[derive(Debug, Clone)]
        enum Mutation {
            Cut(usize),
            Replace(usize, u8),
            Insert(usize, u8),
            Remove(usize),
            /// The byte after the n-th byte that starts or continues a token (a backslash,
            /// a quote, a digit, a sign, a bracket...) replaced: where the grammar is strict.
            AfterSpecial(usize, u8),
        }

        const SPECIAL: &[u8] = b"\\\"-+.eE0123456789{}[],:utfn";

        fn interesting_byte() -> impl Strategy<Value = u8> {
            prop_oneof![
                3 => proptest::sample::select(
                    b"\"\\{}[],:0123456789-+.eEutrfalsn \t\r\n\x00\x01\x1f\x7f\x0c/bx".to_vec()
                ),
                1 => any::<u8>(),
            ]
        }

        /// Pieces of JSON, valid and not, for dense mixes of the grammar's hard cases.
        const TOKENS: &[&str] = &[
            "0", "9", "1", "-", "+", ".", "e", "E", "\"", "\\", "u", "00", "a", "F", "{", "}", "[",
            "]", ",", ":", " ", "true", "tru", "null", "false", "\\u", "\\n", "\\x", "\u{0}",
            "\u{1f}", "\u{7f}", "\u{c}", "é", "\\uD800", "\\uDC00", "\"k\":",
        ];

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                any::<usize>().prop_map(Mutation::Cut),
                (any::<usize>(), interesting_byte()).prop_map(|(at, b)| Mutation::Replace(at, b)),
                (any::<usize>(), interesting_byte()).prop_map(|(at, b)| Mutation::Insert(at, b)),
                any::<usize>().prop_map(Mutation::Remove),
                (any::<usize>(), interesting_byte())
                    .prop_map(|(n, b)| Mutation::AfterSpecial(n, b)),
            ]
        }

        fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
            for m in mutations {
                let len = bytes.len();
                match *m {
                    Mutation::Cut(at) => bytes.truncate(at % (len + 1)),
                    Mutation::Replace(at, b) if len > 0 => bytes[at % len] = b,
                    Mutation::Insert(at, b) => bytes.insert(at % (len + 1), b),
                    Mutation::Remove(at) if len > 0 => {
                        bytes.remove(at % len);
                    }
                    Mutation::AfterSpecial(n, b) => {
                        let at: Vec<usize> = (0..len.saturating_sub(1))
                            .filter(|&i| SPECIAL.contains(&bytes[i]))
                            .collect();
                        if !at.is_empty() {
                            bytes[at[n % at.len()] + 1] = b;
                        }
                    }
                    _ => {}
                }
            }
            bytes
        }

        /// The reference: the UTF-8 check, then serde_json's scan.
        fn reference(line: &[u8]) -> Result<Option<String>, ()> {
            let text = std::str::from_utf8(line).map_err(|_| ())?;
            check_line_serde(text)
                .map(|found| found.map(|f| f.into_owned()))
                .map_err(|_| ())
        }

        fn assert_same(line: &[u8]) -> Result<(), TestCaseError> {
            let expected = reference(line);
            // The fast scan alone agrees on accept and reject...
            let text = std::str::from_utf8(line);
            if let Ok(text) = text {
                let fast = super::scan(text.as_bytes());
                prop_assert_eq!(
                    matches!(fast, super::Scan::Valid(_)),
                    expected.is_ok() && !matches!(fast, super::Scan::TooDeep),
                    "scan {:?} vs serde {:?} on {:?}",
                    fast,
                    expected,
                    String::from_utf8_lossy(line)
                );
            }
            // ...and check_line gives serde's answer, the resourceType included.
            let got = check_line(line)
                .map(|found| found.map(|f| f.into_owned()))
                .map_err(|e| matches!(e, ParseError::InvalidUtf8(_)));
            match (&got, &expected) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(invalid_utf8), Err(())) => {
                    prop_assert_eq!(*invalid_utf8, text.is_err())
                }
                _ => prop_assert!(
                    false,
                    "check_line {:?} vs serde {:?} on {:?}",
                    got,
                    expected,
                    String::from_utf8_lossy(line)
                ),
            }
            // The typed shortcut never accepts what serde refuses or types otherwise, and
            // accepts every line whose type it can compare unescaped.
            let found = expected.clone().ok().flatten();
            for kind in ["Patient", "resourceType", ""]
                .into_iter()
                .chain(found.as_deref())
            {
                let quick = crate::resource::is_valid_of_type(line, kind);
                let typed = matches!(&expected, Ok(Some(t)) if t == kind);
                if quick {
                    prop_assert!(
                        typed,
                        "accepted as {:?}: {:?}",
                        kind,
                        String::from_utf8_lossy(line)
                    );
                }
                if typed && let Ok(text) = text {
                    let plain = matches!(super::scan(text.as_bytes()), super::Scan::Valid(Some(span)) if !span.escaped);
                    prop_assert_eq!(
                        quick,
                        plain,
                        "{:?} as {:?}",
                        String::from_utf8_lossy(line),
                        kind
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn generated_lines_agree(line in line()) {
                assert_same(line.as_bytes())?;
            }

            #[test]
            fn mutated_lines_agree(
                line in line(),
                mutations in proptest::collection::vec(mutation(), 1..4),
            ) {
                assert_same(&mutate(line.into_bytes(), &mutations))?;
            }

            #[test]
            fn token_soup_agrees(
                tokens in proptest::collection::vec(proptest::sample::select(TOKENS), 0..24),
                close in any::<bool>(),
            ) {
                let mut line = b"{\"a\":".to_vec();
                for token in tokens {
                    line.extend_from_slice(token.as_bytes());
                }
                if close {
                    line.push(b'}');
                }
                assert_same(&line)?;
            }
        }
    }
}
