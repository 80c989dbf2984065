//! Posture conditions (`node:os == 'linux'`, `node:clientVersion >= '0.2.0'`,
//! `node:edr IN ['falcon']`, `custom:managed IS SET`): parsing, static type checks for the
//! well-known attributes, and evaluation against a device's attributes with a reason for
//! every failure.

use crate::posture::{attr, AttrValue, PostureAttrs};
use std::cmp::Ordering;
use std::fmt;

/// A literal on the right-hand side of a condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Bool(bool),
    Number(f64),
    Str(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Number(n) => write!(f, "{n}"),
            Literal::Str(s) => write!(f, "'{s}'"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Test {
    Cmp(CmpOp, Literal),
    In(Vec<Literal>),
    NotIn(Vec<Literal>),
    IsSet,
    NotSet,
}

/// One condition on one attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub attr: String,
    pub test: Test,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |xs: &[Literal]| {
            xs.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.test {
            Test::Cmp(op, v) => write!(f, "{} {} {v}", self.attr, op.as_str()),
            Test::In(xs) => write!(f, "{} IN [{}]", self.attr, list(xs)),
            Test::NotIn(xs) => write!(f, "{} NOT IN [{}]", self.attr, list(xs)),
            Test::IsSet => write!(f, "{} IS SET", self.attr),
            Test::NotSet => write!(f, "{} NOT SET", self.attr),
        }
    }
}

/// The value type of a well-known attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttrType {
    Bool,
    Number,
    Text,
    Version,
    List,
    /// `custom:*`: whatever the admin or feed sets.
    Any,
}

fn attr_type(name: &str) -> Option<AttrType> {
    Some(match name {
        attr::OS | attr::POSTURE_SOURCE => AttrType::Text,
        attr::OS_VERSION | attr::KERNEL_VERSION | attr::CLIENT_VERSION => AttrType::Version,
        attr::DISK_ENCRYPTED | attr::FIREWALL | attr::SECURE_BOOT => AttrType::Bool,
        attr::EDR => AttrType::List,
        attr::LAST_UPDATE_DAYS => AttrType::Number,
        n if n.starts_with(attr::CUSTOM_PREFIX) && n.len() > attr::CUSTOM_PREFIX.len() => {
            AttrType::Any
        }
        _ => return None,
    })
}

/// Reads an attribute value written on a command line (`--attr node:diskEncrypted=true`):
/// typed by the attribute for well-known ones (lists comma-separated), guessed for `custom:*`.
pub fn attr_value_from_str(name: &str, v: &str) -> Result<AttrValue, String> {
    let Some(ty) = attr_type(name) else {
        return Err(format!("unknown attribute `{name}`: expected {KNOWN}"));
    };
    let num = |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .map(AttrValue::Number)
            .ok_or_else(|| format!("{name} expects a number, found `{v}`"))
    };
    let boolean = |v: &str| match v {
        "true" => Ok(AttrValue::Bool(true)),
        "false" => Ok(AttrValue::Bool(false)),
        _ => Err(format!("{name} expects true or false, found `{v}`")),
    };
    match ty {
        AttrType::Bool => boolean(v),
        AttrType::Number => num(v),
        AttrType::Text | AttrType::Version => Ok(AttrValue::String(v.to_string())),
        AttrType::List => Ok(AttrValue::List(
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect(),
        )),
        AttrType::Any => Ok(boolean(v)
            .or_else(|_| num(v))
            .unwrap_or_else(|_| AttrValue::String(v.to_string()))),
    }
}

/// Whether `name` is an attribute conditions may use.
pub fn is_known_attr(name: &str) -> bool {
    attr_type(name).is_some()
}

const KNOWN: &str = "node:os, node:osVersion, node:kernelVersion, node:clientVersion, \
node:diskEncrypted, node:firewall, node:secureBoot, node:edr, node:lastUpdateDays, \
node:postureSource or custom:NAME";

/// Parses a condition; the error says what was expected, with the character offset in `s`.
pub fn parse(s: &str) -> Result<Condition, (usize, String)> {
    let mut lx = Lexer { s, i: 0 };
    lx.ws();
    let start = lx.i;
    let name = lx.ident();
    if name.is_empty() {
        return Err((start, format!("expected an attribute name ({KNOWN})")));
    }
    let Some(ty) = attr_type(name) else {
        return Err((
            start,
            format!("unknown attribute `{name}`: expected {KNOWN}"),
        ));
    };
    lx.ws();
    let op_at = lx.i;
    let test = if lx.eat_word("IS") {
        lx.ws();
        if !lx.eat_word("SET") {
            return Err((lx.i, "expected SET after IS".into()));
        }
        Test::IsSet
    } else if lx.eat_word("NOT") {
        lx.ws();
        if lx.eat_word("SET") {
            Test::NotSet
        } else if lx.eat_word("IN") {
            lx.ws();
            Test::NotIn(lx.list()?)
        } else {
            return Err((lx.i, "expected SET or IN after NOT".into()));
        }
    } else if lx.eat_word("IN") {
        lx.ws();
        Test::In(lx.list()?)
    } else {
        let op = if lx.eat("==") {
            CmpOp::Eq
        } else if lx.eat("!=") {
            CmpOp::Ne
        } else if lx.eat("<=") {
            CmpOp::Le
        } else if lx.eat(">=") {
            CmpOp::Ge
        } else if lx.eat("<") {
            CmpOp::Lt
        } else if lx.eat(">") {
            CmpOp::Gt
        } else {
            return Err((
                op_at,
                "expected an operator: == != < <= > >= IN, NOT IN, IS SET or NOT SET".into(),
            ));
        };
        lx.ws();
        Test::Cmp(op, lx.literal()?)
    };
    lx.ws();
    if lx.i < s.len() {
        return Err((lx.i, "expected the end of the condition".into()));
    }
    let cond = Condition {
        attr: name.to_string(),
        test,
    };
    check_types(&cond, ty).map_err(|m| (op_at, m))?;
    Ok(cond)
}

fn check_types(c: &Condition, ty: AttrType) -> Result<(), String> {
    let lit_ok = |l: &Literal| match ty {
        AttrType::Bool => matches!(l, Literal::Bool(_)),
        AttrType::Number => matches!(l, Literal::Number(_)),
        AttrType::Text | AttrType::Version | AttrType::List => matches!(l, Literal::Str(_)),
        AttrType::Any => true,
    };
    let want = match ty {
        AttrType::Bool => "true or false",
        AttrType::Number => "a number",
        AttrType::Text | AttrType::List => "a quoted string",
        AttrType::Version => "a quoted version such as '1.2.3'",
        AttrType::Any => "a value",
    };
    if c.attr == attr::POSTURE_SOURCE {
        if let Some(bad) = literals(&c.test)
            .into_iter()
            .find(|l| !matches!(l, Literal::Str(s) if POSTURE_SOURCES.contains(&s.as_str())))
        {
            return Err(format!(
                "{} expects 'system' or 'fixture', found {bad}",
                c.attr
            ));
        }
    }
    let lits: Vec<&Literal> = match &c.test {
        Test::Cmp(op, l) => {
            let ordered = !matches!(op, CmpOp::Eq | CmpOp::Ne);
            if ordered && matches!(ty, AttrType::Bool | AttrType::Text | AttrType::List) {
                return Err(format!(
                    "{} cannot be ordered with {}: expected == or != (or IN)",
                    c.attr,
                    op.as_str()
                ));
            }
            if ordered && matches!(l, Literal::Bool(_)) {
                return Err(format!("a boolean cannot be compared with {}", op.as_str()));
            }
            vec![l]
        }
        Test::In(xs) | Test::NotIn(xs) => {
            if matches!(ty, AttrType::Bool) {
                return Err(format!("{} is a boolean: expected == or !=", c.attr));
            }
            xs.iter().collect()
        }
        Test::IsSet | Test::NotSet => vec![],
    };
    for l in lits {
        if !lit_ok(l) {
            return Err(format!("{} expects {want}, found {l}", c.attr));
        }
    }
    Ok(())
}

/// The values the client reports as `node:postureSource`: probes of the running system, or
/// a fixture file (tests and demos).
const POSTURE_SOURCES: [&str; 2] = ["system", "fixture"];

/// The literals a test compares with.
fn literals(t: &Test) -> Vec<&Literal> {
    match t {
        Test::Cmp(_, l) => vec![l],
        Test::In(xs) | Test::NotIn(xs) => xs.iter().collect(),
        Test::IsSet | Test::NotSet => vec![],
    }
}

struct Lexer<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }
    fn ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }
    fn eat(&mut self, t: &str) -> bool {
        if self.rest().starts_with(t) {
            self.i += t.len();
            true
        } else {
            false
        }
    }
    /// A keyword, not followed by more identifier characters.
    fn eat_word(&mut self, w: &str) -> bool {
        let r = self.rest();
        if r.starts_with(w)
            && !r[w.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.i += w.len();
            true
        } else {
            false
        }
    }
    fn ident(&mut self) -> &'a str {
        let r = self.rest();
        let n = r
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.')))
            .unwrap_or(r.len());
        let start = self.i;
        self.i += n;
        &self.s[start..self.i]
    }
    fn literal(&mut self) -> Result<Literal, (usize, String)> {
        let at = self.i;
        let r = self.rest();
        if let Some(q) = r.chars().next().filter(|c| *c == '\'' || *c == '"') {
            let body = &r[1..];
            let Some(end) = body.find(q) else {
                return Err((at, format!("unterminated string: expected a closing {q}")));
            };
            let v = body[..end].to_string();
            self.i += end + 2;
            return Ok(Literal::Str(v));
        }
        if self.eat_word("true") {
            return Ok(Literal::Bool(true));
        }
        if self.eat_word("false") {
            return Ok(Literal::Bool(false));
        }
        let n = r
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
            .unwrap_or(r.len());
        match r[..n].parse::<f64>() {
            Ok(v) if n > 0 && v.is_finite() => {
                self.i += n;
                Ok(Literal::Number(v))
            }
            _ => Err((
                at,
                "expected a value: a quoted string, a number, true or false".into(),
            )),
        }
    }
    fn list(&mut self) -> Result<Vec<Literal>, (usize, String)> {
        if !self.eat("[") {
            return Err((self.i, "expected '[' to start a list".into()));
        }
        let mut out = Vec::new();
        loop {
            self.ws();
            if self.eat("]") {
                break;
            }
            out.push(self.literal()?);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                break;
            }
            return Err((self.i, "expected ',' or ']' in the list".into()));
        }
        if out.is_empty() {
            return Err((self.i, "expected at least one value in the list".into()));
        }
        Ok(out)
    }
}

/// Compares versions component by component: numeric parts as numbers, others as text;
/// a missing component counts as 0 (so `1.2` == `1.2.0`). A leading `v` is ignored.
pub fn cmp_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<String> {
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
        s.split(['.', '-', '+', '_']).map(str::to_string).collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let x = pa.get(i).map(String::as_str).unwrap_or("0");
        let y = pb.get(i).map(String::as_str).unwrap_or("0");
        let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        let o = if num(x) && num(y) {
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        } else {
            x.cmp(y)
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn describe(v: &AttrValue) -> String {
    match v {
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Number(n) => n.to_string(),
        AttrValue::String(s) => format!("'{s}'"),
        AttrValue::List(xs) => format!(
            "[{}]",
            xs.iter()
                .map(|x| format!("'{x}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Compares a device value with a literal; `None` when their types do not compare.
fn compare(v: &AttrValue, l: &Literal) -> Option<Ordering> {
    match (v, l) {
        (AttrValue::Bool(a), Literal::Bool(b)) => Some(a.cmp(b)),
        (AttrValue::Number(a), Literal::Number(b)) => a.partial_cmp(b),
        (AttrValue::String(a), Literal::Str(b)) => Some(cmp_versions(a, b)),
        _ => None,
    }
}

/// Equality as the attribute's type defines it: versions component by component (so
/// `14.0 == 14`, as `<=` and `>=` agree), other text exactly, lists by membership.
fn equals(v: &AttrValue, l: &Literal, version: bool) -> bool {
    match (v, l) {
        (AttrValue::String(a), Literal::Str(b)) if version => cmp_versions(a, b) == Ordering::Equal,
        (AttrValue::String(a), Literal::Str(b)) => a == b,
        (AttrValue::List(xs), Literal::Str(b)) => xs.iter().any(|x| x == b),
        _ => compare(v, l) == Some(Ordering::Equal),
    }
}

impl Condition {
    /// Ok when the device's attributes satisfy the condition; otherwise what the device
    /// reports instead. A missing attribute fails everything except `NOT SET`.
    pub fn eval(&self, attrs: &PostureAttrs) -> Result<(), String> {
        let Some(v) = attrs.get(&self.attr) else {
            return match self.test {
                Test::NotSet => Ok(()),
                _ => Err(format!("device does not report {}", self.attr)),
            };
        };
        let version = attr_type(&self.attr) == Some(AttrType::Version);
        let equals = |l: &Literal| equals(v, l, version);
        let ok = match &self.test {
            Test::NotSet => false,
            Test::IsSet => true,
            Test::Cmp(CmpOp::Eq, l) => equals(l),
            Test::Cmp(CmpOp::Ne, l) => match v {
                AttrValue::List(_) => !equals(l),
                _ => compare(v, l).is_some() && !equals(l),
            },
            Test::Cmp(op, l) => match v {
                // Ordering compares versions, so both sides must be versions (or numbers).
                AttrValue::String(_) | AttrValue::Number(_) => {
                    compare(v, l).is_some_and(|o| op.holds(o))
                }
                _ => false,
            },
            Test::In(xs) => xs.iter().any(equals),
            Test::NotIn(xs) => {
                !xs.iter().any(equals)
                    && (matches!(v, AttrValue::List(_))
                        || xs.iter().all(|l| compare(v, l).is_some()))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("device reports {}", describe(v)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, AttrValue)]) -> PostureAttrs {
        kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn holds(c: &str, a: &PostureAttrs) -> bool {
        parse(c)
            .unwrap_or_else(|e| panic!("{c}: {e:?}"))
            .eval(a)
            .is_ok()
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(cmp_versions("0.10.1", "0.2.0"), Ordering::Greater);
        assert_eq!(cmp_versions("1.2", "1.2.0"), Ordering::Equal);
        assert_eq!(cmp_versions("v6.1.0", "6.10"), Ordering::Less);
        assert_eq!(cmp_versions("6.1.0-rc1", "6.1.0-rc2"), Ordering::Less);
        assert_eq!(cmp_versions("010", "9"), Ordering::Greater);
    }

    #[test]
    fn every_operator() {
        let a = attrs(&[
            ("node:os", AttrValue::String("linux".into())),
            ("node:clientVersion", AttrValue::String("0.10.1".into())),
            ("node:diskEncrypted", AttrValue::Bool(true)),
            ("node:lastUpdateDays", AttrValue::Number(3.0)),
            (
                "node:edr",
                AttrValue::List(vec!["falcon".into(), "clamav".into()]),
            ),
            ("custom:tier", AttrValue::Number(2.0)),
        ]);
        for (c, want) in [
            ("node:os == 'linux'", true),
            ("node:os == \"linux\"", true),
            ("node:os != 'linux'", false),
            ("node:os IN ['macos', 'linux']", true),
            ("node:os NOT IN ['macos', 'windows']", true),
            ("node:os NOT IN ['linux']", false),
            ("node:clientVersion >= '0.2.0'", true),
            ("node:clientVersion > '0.10.1'", false),
            ("node:clientVersion <= '0.10.1'", true),
            ("node:clientVersion < '1.0'", true),
            ("node:diskEncrypted == true", true),
            ("node:diskEncrypted != true", false),
            ("node:lastUpdateDays <= 14", true),
            ("node:lastUpdateDays > 3", false),
            ("node:lastUpdateDays IN [1, 3]", true),
            ("node:edr == 'falcon'", true),
            ("node:edr IN ['sentinelone', 'clamav']", true),
            ("node:edr NOT IN ['falcon']", false),
            ("node:edr != 'sentinelone'", true),
            ("node:os IS SET", true),
            ("node:os NOT SET", false),
            ("node:firewall NOT SET", true),
            ("node:firewall IS SET", false),
            ("node:firewall == false", false),
            ("node:firewall != true", false),
            ("custom:tier >= 2", true),
            ("custom:tier == 'x'", false),
            ("custom:missing NOT IN ['a']", false),
        ] {
            assert_eq!(holds(c, &a), want, "{c}");
        }
    }

    #[test]
    fn version_equality_compares_components_like_the_ordering() {
        let a = attrs(&[
            ("node:osVersion", AttrValue::String("14.0".into())),
            ("node:kernelVersion", AttrValue::String("v6.1".into())),
            ("node:clientVersion", AttrValue::String("0.2.0".into())),
            ("custom:build", AttrValue::String("1.0".into())),
        ]);
        for (c, want) in [
            ("node:osVersion == '14'", true),
            ("node:osVersion == '14.0.0'", true),
            ("node:osVersion >= '14'", true),
            ("node:osVersion <= '14'", true),
            ("node:osVersion != '14'", false),
            ("node:osVersion != '14.1'", true),
            ("node:osVersion IN ['13', '14']", true),
            ("node:osVersion NOT IN ['14']", false),
            ("node:osVersion NOT IN ['13', '15.0']", true),
            ("node:kernelVersion == '6.1.0'", true),
            ("node:kernelVersion IN ['6.1.0']", true),
            ("node:clientVersion == '0.2'", true),
            ("node:clientVersion == '0.20'", false),
            // Other text compares exactly, even when it looks like a version.
            ("custom:build == '1'", false),
            ("custom:build == '1.0'", true),
        ] {
            assert_eq!(holds(c, &a), want, "{c}");
        }
    }

    #[test]
    fn posture_source_literals_are_system_or_fixture() {
        for ok in [
            "node:postureSource == 'system'",
            "node:postureSource != 'fixture'",
            "node:postureSource IN ['system', 'fixture']",
            "node:postureSource NOT IN ['fixture']",
            "node:postureSource IS SET",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for (bad, found) in [
            ("node:postureSource == 'mdm'", "'mdm'"),
            ("node:postureSource IN ['system', 'System']", "'System'"),
            ("node:postureSource NOT IN ['sys']", "'sys'"),
        ] {
            let (off, m) = parse(bad).unwrap_err();
            assert_eq!(off, 19, "{bad}");
            assert_eq!(
                m,
                format!("node:postureSource expects 'system' or 'fixture', found {found}")
            );
        }
        let a = attrs(&[("node:postureSource", AttrValue::String("fixture".into()))]);
        assert!(holds("node:postureSource == 'fixture'", &a));
        assert!(!holds("node:postureSource == 'system'", &a));
    }

    #[test]
    fn reasons_say_what_the_device_reports() {
        let a = attrs(&[("node:diskEncrypted", AttrValue::Bool(false))]);
        let c = parse("node:diskEncrypted == true").unwrap();
        assert_eq!(c.eval(&a).unwrap_err(), "device reports false");
        let c = parse("node:os == 'linux'").unwrap();
        assert_eq!(c.eval(&a).unwrap_err(), "device does not report node:os");
        assert_eq!(c.to_string(), "node:os == 'linux'");
    }

    #[test]
    fn malformed_conditions_are_refused_with_an_offset() {
        for (c, at, frag) in [
            ("node:color == 'red'", 0, "unknown attribute"),
            ("node:os ~= 'linux'", 8, "expected an operator"),
            ("node:os == linux", 11, "expected a value"),
            ("node:os == 'linux", 11, "unterminated"),
            ("node:diskEncrypted == 'yes'", 19, "expects true or false"),
            ("node:os > 'a'", 8, "cannot be ordered"),
            ("node:lastUpdateDays == '3'", 20, "expects a number"),
            ("node:os IN 'linux'", 11, "expected '['"),
            ("node:os IN []", 13, "at least one"),
            ("node:os IS", 10, "expected SET"),
            ("node:os == 'a' extra", 15, "end of the condition"),
            ("", 0, "attribute name"),
        ] {
            let (off, m) = parse(c).unwrap_err();
            assert_eq!(off, at, "{c}: {m}");
            assert!(m.contains(frag), "{c}: {m}");
        }
    }
}
