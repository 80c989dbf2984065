//! HuJSON (JSON with `//` and `/* */` comments and trailing commas) parsed into a tree that
//! remembers where every value and key starts, so that validation can point at
//! `file:line:column`. Duplicate object keys are refused here, once, for every section.

use std::collections::HashMap;
use std::fmt;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A parsed value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub pos: Pos,
    pub kind: Kind,
}

/// An object member: its key (with the key's position) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub key: String,
    pub key_pos: Pos,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    /// The number as written, and its value.
    Number(String, f64),
    Str(String),
    Array(Vec<Value>),
    /// Members in source order (keys are unique).
    Object(Vec<Member>),
}

impl Value {
    /// A short name of the value's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Number(..) => "a number",
            Kind::Str(_) => "a string",
            Kind::Array(_) => "a list",
            Kind::Object(_) => "an object",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Converts to a `serde_json::Value` (positions dropped).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            Kind::Null => serde_json::Value::Null,
            Kind::Bool(b) => serde_json::Value::Bool(*b),
            Kind::Number(_, n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Kind::Str(s) => serde_json::Value::String(s.clone()),
            Kind::Array(xs) => serde_json::Value::Array(xs.iter().map(Value::to_json).collect()),
            Kind::Object(ms) => serde_json::Value::Object(
                ms.iter()
                    .map(|m| (m.key.clone(), m.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A syntax error: where, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Nesting deeper than this is refused (a policy is a few levels deep; this bounds recursion).
pub const MAX_DEPTH: usize = 64;

/// Parses a whole HuJSON document (one value, then only whitespace and comments).
pub fn parse(src: &str) -> Result<Value, SyntaxError> {
    let mut p = Parser {
        chars: src.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
    };
    p.skip_ws()?;
    let v = p.value(0)?;
    p.skip_ws()?;
    if p.i < p.chars.len() {
        return Err(p.err("end of input after the top-level value"));
    }
    Ok(v)
}

struct Parser {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
}

impl Parser {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// "expected X, found Y" at the current position.
    fn err(&self, expected: &str) -> SyntaxError {
        let found = match self.peek() {
            None => "end of input".to_string(),
            Some(c) if c.is_control() => format!("{:?}", c),
            Some(c) => format!("'{c}'"),
        };
        SyntaxError {
            pos: self.pos(),
            message: format!("expected {expected}, found {found}"),
        }
    }

    fn skip_ws(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(' ' | '\t' | '\n' | '\r' | '\u{feff}') => {
                    self.bump();
                }
                Some('/') => {
                    let start = self.pos();
                    match self.chars.get(self.i + 1) {
                        Some('/') => {
                            while let Some(c) = self.peek() {
                                if c == '\n' {
                                    break;
                                }
                                self.bump();
                            }
                        }
                        Some('*') => {
                            self.bump();
                            self.bump();
                            loop {
                                match self.bump() {
                                    None => {
                                        return Err(SyntaxError {
                                            pos: start,
                                            message: "unterminated /* comment: expected */".into(),
                                        })
                                    }
                                    Some('*') if self.peek() == Some('/') => {
                                        self.bump();
                                        break;
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                        _ => {
                            self.bump();
                            return Err(SyntaxError {
                                pos: start,
                                message: "expected a comment (// or /*) after '/'".into(),
                            });
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.err(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        let pos = self.pos();
        let kind = match self.peek() {
            Some('{') => self.object(depth)?,
            Some('[') => self.array(depth)?,
            Some('"') => Kind::Str(self.string()?),
            Some('-' | '0'..='9') => self.number()?,
            Some(c) if c.is_ascii_alphabetic() => self.word()?,
            _ => return Err(self.err("a value (object, list, string, number, true, false, null)")),
        };
        Ok(Value { pos, kind })
    }

    fn word(&mut self) -> Result<Kind, SyntaxError> {
        let start = self.pos();
        let begin = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        let w: String = self.chars[begin..self.i].iter().collect();
        match w.as_str() {
            "true" => Ok(Kind::Bool(true)),
            "false" => Ok(Kind::Bool(false)),
            "null" => Ok(Kind::Null),
            _ => Err(SyntaxError {
                pos: start,
                message: format!(
                    "expected a value (true, false, null or a quoted string), found `{w}`"
                ),
            }),
        }
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        let start = self.pos();
        let begin = self.i;
        if self.peek() == Some('-') {
            self.bump();
        }
        let digits = |p: &mut Parser| {
            let b = p.i;
            while p.peek().is_some_and(|c| c.is_ascii_digit()) {
                p.bump();
            }
            p.i - b
        };
        if digits(self) == 0 {
            return Err(self.err("a digit"));
        }
        if self.peek() == Some('.') {
            self.bump();
            if digits(self) == 0 {
                return Err(self.err("a digit after '.'"));
            }
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if digits(self) == 0 {
                return Err(self.err("a digit in the exponent"));
            }
        }
        let text: String = self.chars[begin..self.i].iter().collect();
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Kind::Number(text, n)),
            _ => Err(SyntaxError {
                pos: start,
                message: format!("expected a finite number, found `{text}`"),
            }),
        }
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos();
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None => {
                    return Err(SyntaxError {
                        pos: start,
                        message: "unterminated string: expected a closing '\"'".into(),
                    })
                }
                Some('"') => {
                    return match out.chars().find(|c| disguising(*c)) {
                        None => Ok(out),
                        Some(c) => Err(SyntaxError {
                            pos: start,
                            message: format!(
                                "U+{:04X} in a string: expected printable text (control, \
                                 invisible and direction-changing characters can make one \
                                 name look like another, or rewrite the terminal that prints \
                                 it)",
                                c as u32
                            ),
                        }),
                    }
                }
                Some('\n') => {
                    return Err(SyntaxError {
                        pos: here,
                        message: "expected a closing '\"' before the end of the line".into(),
                    })
                }
                Some('\\') => {
                    let esc = self.pos();
                    match self.bump() {
                        Some('"') => out.push('"'),
                        Some('\\') => out.push('\\'),
                        Some('/') => out.push('/'),
                        Some('b') => out.push('\u{8}'),
                        Some('f') => out.push('\u{c}'),
                        Some('n') => out.push('\n'),
                        Some('r') => out.push('\r'),
                        Some('t') => out.push('\t'),
                        Some('u') => {
                            let hi = self.hex4(esc)?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if self.peek() == Some('\\')
                                    && self.chars.get(self.i + 1) == Some(&'u')
                                {
                                    self.bump();
                                    self.bump();
                                    let lo = self.hex4(esc)?;
                                    if !(0xDC00..0xE000).contains(&lo) {
                                        return Err(SyntaxError {
                                            pos: esc,
                                            message:
                                                "expected a low surrogate after a high surrogate"
                                                    .into(),
                                        });
                                    }
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                                } else {
                                    None
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            match c {
                                Some(c) => out.push(c),
                                None => {
                                    return Err(SyntaxError {
                                        pos: esc,
                                        message: "expected a valid unicode escape".into(),
                                    })
                                }
                            }
                        }
                        _ => {
                            return Err(SyntaxError {
                                pos: esc,
                                message:
                                    "expected an escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)"
                                        .into(),
                            })
                        }
                    }
                }
                Some(c) if (c as u32) < 0x20 => {
                    return Err(SyntaxError {
                        pos: here,
                        message: "expected no control characters inside a string".into(),
                    })
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn hex4(&mut self, esc: Pos) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    self.bump();
                    v = v * 16 + d;
                }
                None => {
                    return Err(SyntaxError {
                        pos: esc,
                        message: "expected four hex digits after \\u".into(),
                    })
                }
            }
        }
        Ok(v)
    }

    fn array(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        self.bump(); // [
        let mut items = Vec::new();
        loop {
            self.skip_ws()?;
            if self.peek() == Some(']') {
                self.bump();
                return Ok(Kind::Array(items));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(']') => {}
                _ => return Err(self.err("',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        self.bump(); // {
        let mut members: Vec<Member> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            self.skip_ws()?;
            match self.peek() {
                Some('}') => {
                    self.bump();
                    return Ok(Kind::Object(members));
                }
                Some('"') => {}
                _ => return Err(self.err("a quoted key or '}'")),
            }
            let key_pos = self.pos();
            let key = self.string()?;
            // An index of the keys seen, so that an object of n keys costs n lookups, not
            // n² comparisons (policies have groups and hosts by the ten thousand).
            if let Some(&first) = seen.get(key.as_str()) {
                let first: &Member = &members[first];
                return Err(SyntaxError {
                    pos: key_pos,
                    message: format!(
                        "duplicate key \"{key}\" (first defined at {}): expected each key once",
                        first.key_pos
                    ),
                });
            }
            seen.insert(key.clone(), members.len());
            self.skip_ws()?;
            if self.peek() != Some(':') {
                return Err(self.err("':' after the key"));
            }
            self.bump();
            self.skip_ws()?;
            let value = self.value(depth + 1)?;
            members.push(Member {
                key,
                key_pos,
                value,
            });
            self.skip_ws()?;
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {}
                _ => return Err(self.err("',' or '}'")),
            }
        }
    }
}

/// Characters no policy string has a use for and that can deceive a reader: controls (C0,
/// DEL, C1, escapes included) and the invisible or bidirectional formatting characters.
fn disguising(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, col: u32) -> Pos {
        Pos { line, col }
    }

    #[test]
    fn comments_and_trailing_commas() {
        let v =
            parse("// head\n{ /* a */ \"a\": [1, 2,], \"b\": {\"c\": true,}, }\n// tail").unwrap();
        let Kind::Object(ms) = v.kind else { panic!() };
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].key_pos, at(2, 11));
        assert_eq!(ms[1].value.pos, at(2, 30));
    }

    #[test]
    fn strings_that_could_disguise_a_name_are_refused_without_echoing_them() {
        for (src, code) in [
            (r#"{"a": "\u001b[2J FAKE OK"}"#, "U+001B"),
            ("{\"a\": \"al\u{200B}ice@example.com\"}", "U+200B"),
            (r#"{"a": "x\u202Egnp.exe"}"#, "U+202E"),
            ("{\"a\u{7f}\": 1}", "U+007F"),
            (r#"{"a": "tab\tin a name"}"#, "U+0009"),
        ] {
            let e = parse(src).unwrap_err();
            assert!(e.message.starts_with(code), "{src}: {}", e.message);
            assert!(!e.message.chars().any(disguising), "{:?}", e.message);
        }
        // Other non-ASCII text is fine.
        assert!(parse(r#"{"a": "zoë@example.com", "b": "東京"}"#).is_ok());
    }

    #[test]
    fn duplicate_key_is_an_error_at_the_second() {
        let e = parse("{\n  \"a\": 1,\n  \"a\": 2\n}").unwrap_err();
        assert_eq!(e.pos, at(3, 3));
        assert!(
            e.message
                .contains("duplicate key \"a\" (first defined at 2:3)"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_comma_points_at_the_next_key() {
        let e = parse("{\n  \"a\": {}\n  \"b\": []\n}").unwrap_err();
        assert_eq!(e.pos, at(3, 3));
        assert_eq!(e.message, "expected ',' or '}', found '\"'");
    }

    #[test]
    fn errors_say_what_was_expected() {
        for (src, pos, frag) in [
            ("", at(1, 1), "expected a value"),
            ("{\"a\" 1}", at(1, 6), "':' after the key"),
            ("[1 2]", at(1, 4), "',' or ']'"),
            ("\"abc", at(1, 1), "unterminated string"),
            ("/* x", at(1, 1), "unterminated /*"),
            ("{} x", at(1, 4), "end of input"),
            ("[tru]", at(1, 2), "found `tru`"),
            ("[\"\\q\"]", at(1, 4), "an escape"),
            ("{'a': 1}", at(1, 2), "a quoted key"),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!(e.pos, pos, "{src}: {}", e.message);
            assert!(e.message.contains(frag), "{src}: {}", e.message);
        }
    }

    #[test]
    fn columns_count_characters() {
        let e = parse("{\"é\": 1 x}").unwrap_err();
        assert_eq!(e.pos, at(1, 9));
    }

    #[test]
    fn escapes_decode() {
        let v = parse(r#""a\"b\u00e9\ud83d\ude00""#).unwrap();
        assert_eq!(v.as_str(), Some("a\"bé😀"));
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let src = "[".repeat(10_000);
        assert!(parse(&src)
            .unwrap_err()
            .message
            .contains("levels of nesting"));
    }
}
