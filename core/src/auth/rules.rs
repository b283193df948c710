//! Authorization rule conditions: a subset of CEL (the Common Expression Language of
//! Kubernetes, Envoy RBAC and the peer gateways), parsed once at configure time into a tree
//! and evaluated per request by the small interpreter below.
//!
//! Why not the `cel` crate: it builds for `wasm32-wasip1`, but a module that only compiles
//! and runs one expression is 3.3 MB (opt-level s, LTO) where the whole filter is about
//! 0.5 MB (docs/DESIGN: measured), and its ANTLR parser allocates heavily. Rules are short
//! boolean conditions over a handful of values; this subset covers them in a few hundred
//! lines with no dependency.
//!
//! The subset (CEL syntax and meaning, except where noted):
//! - literals: `true`, `false`, `null`, integers, decimals, strings in `'…'` or `"…"` (escapes
//!   `\\ \' \" \n \r \t`), lists `[a, b]`;
//! - names: `principal` (`sub`, `iss`, `email`, `teams`, `roles`, `permissions`), `claims`
//!   (the verified token payload), `request` (`method`, `name`: the tool or prompt name or
//!   the resource URI, `server`), `args` (a `tools/call`'s arguments; an empty map for other
//!   methods);
//! - field access `a.b`, index `a[0]`, `a['key']`; `has(a.b)`;
//! - `==`, `!=`, `<`, `<=`, `>`, `>=` (numbers, strings, bools), `in` (list membership, map
//!   key),
//!   `!`, unary `-`, `&&`, `||` (CEL's commutative error absorption: `false && error` is
//!   `false`), `c ? a : b`;
//! - `s.startsWith(p)`, `s.endsWith(p)`, `s.contains(p)`, `size(x)` / `x.size()`,
//!   `l.exists(v, cond)`, `l.all(v, cond)` (over a list's elements or a map's keys).
//!
//! Not supported (refused at configure time): arithmetic, map literals, `matches` (no regex
//! engine in the filter), type conversions, macros other than `has`, `exists`, `all`.
//!
//! The control plane checks each condition when it is written with the `cel` crate's parser,
//! the names and types this module provides and this subset (`mcpgw::rules`), and its
//! integration test `rules` holds this evaluator to the `cel` crate's interpreter over a
//! corpus of conditions: fix a disagreement here, or refuse the construct there.
//!
//! Evaluation is three-valued where it must be: a list answered at the edge asks which
//! tools a principal may call without knowing a call's arguments, so `args` is then
//! *unknown*, which propagates (`x && unknown` is unknown unless `x` is false) and lets the
//! list show what some call could be allowed.

use serde_json::Value;
use std::borrow::Cow;

/// Longest rule condition accepted, in bytes.
pub const MAX_RULE_BYTES: usize = 4096;
/// Deepest nesting of a condition (parentheses, operators, calls).
const MAX_DEPTH: usize = 48;

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    node: Node,
    /// Whether the condition reads `args` (a call's arguments are parsed only for rules
    /// that do).
    pub reads_args: bool,
    /// The fields of `args` it reads, when it reads only named fields (`args.f`,
    /// `has(args.f)`, `args['f']`); `None` when it reads `args` as a whole.
    arg_fields: Option<Vec<String>>,
}

/// A name the condition is evaluated over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Principal,
    Claims,
    Request,
    Args,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    StartsWith,
    EndsWith,
    Contains,
    Size,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Root(Root),
    /// A comprehension variable, by its depth.
    Var(usize),
    Select(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Has(Box<Node>, String),
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Compare(Cmp, Box<Node>, Box<Node>),
    In(Box<Node>, Box<Node>),
    Call(Func, Box<Node>, Vec<Node>),
    /// `range.exists(var, cond)` (`all: false`) or `range.all(var, cond)`.
    Quantifier {
        all: bool,
        range: Box<Node>,
        cond: Box<Node>,
    },
}

/// A condition that does not parse: where (byte offset) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {reason}")]
pub struct ParseError {
    /// Byte offset in the condition.
    pub offset: usize,
    /// Why.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Punct(&'static str),
    End,
}

const PUNCTS: [&str; 19] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "?", ":", "(", ")", "[", "]", ",", ".", "-",
    "{",
];

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let fail = |offset, reason: &str| ParseError {
        offset,
        reason: reason.to_owned(),
    };
    while let Some(&b) = bytes.get(i) {
        let start = i;
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            while bytes
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                i += 1;
            }
            out.push((
                start,
                Tok::Ident(src.get(start..i).unwrap_or_default().into()),
            ));
            continue;
        }
        if b.is_ascii_digit() {
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let float =
                bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            if float {
                i += 1;
                while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
            }
            let text = src.get(start..i).unwrap_or_default();
            let tok = if float {
                Tok::Float(text.parse().map_err(|_| fail(start, "bad number"))?)
            } else {
                Tok::Int(
                    text.parse()
                        .map_err(|_| fail(start, "integer out of range"))?,
                )
            };
            out.push((start, tok));
            continue;
        }
        if b == b'\'' || b == b'"' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(c) = src.get(i..).and_then(|r| r.chars().next()) else {
                    return Err(fail(start, "unterminated string"));
                };
                i += c.len_utf8();
                match c {
                    c if c == char::from(b) => break,
                    '\\' => {
                        let e = bytes.get(i).copied();
                        i += 1;
                        s.push(match e {
                            Some(b'\\') => '\\',
                            Some(b'\'') => '\'',
                            Some(b'"') => '"',
                            Some(b'n') => '\n',
                            Some(b'r') => '\r',
                            Some(b't') => '\t',
                            _ => return Err(fail(i - 1, "unknown escape")),
                        });
                    }
                    '\n' => return Err(fail(start, "unterminated string")),
                    c => s.push(c),
                }
            }
            out.push((start, Tok::Str(s)));
            continue;
        }
        let rest = src.get(i..).unwrap_or_default();
        match PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            Some(&"{") => return Err(fail(i, "map literals are not supported")),
            Some(p) => {
                i += p.len();
                out.push((start, Tok::Punct(p)));
            }
            None if rest.starts_with(['+', '*', '/', '%']) => {
                return Err(fail(i, "arithmetic is not supported"));
            }
            None => return Err(fail(i, "unexpected character")),
        }
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    /// Names of the comprehension variables in scope, innermost last.
    vars: Vec<String>,
    reads_args: bool,
}

impl Expr {
    /// Parses and checks a condition.
    pub fn parse(src: &str) -> Result<Expr, ParseError> {
        if src.len() > MAX_RULE_BYTES {
            return Err(ParseError {
                offset: MAX_RULE_BYTES,
                reason: format!("longer than {MAX_RULE_BYTES} bytes"),
            });
        }
        let mut p = Parser {
            toks: lex(src)?,
            pos: 0,
            depth: 0,
            vars: Vec::new(),
            reads_args: false,
        };
        let node = p.expr()?;
        if p.peek() != &Tok::End {
            return Err(p.fail("unexpected text after the expression"));
        }
        let mut fields = Vec::new();
        let arg_fields = arg_fields(&node, &mut fields).then_some(fields);
        Ok(Expr {
            node,
            reads_args: p.reads_args,
            arg_fields,
        })
    }

    /// A condition that never evaluates (it never allows, and always denies).
    pub fn never() -> Expr {
        Expr {
            node: Node::Null,
            reads_args: false,
            arg_fields: Some(Vec::new()),
        }
    }

    /// The fields of `args` the condition reads (empty when it does not read `args`), or
    /// `None` when it reads `args` as a whole (its size, its keys, an index computed at
    /// run time).
    pub fn arg_fields(&self) -> Option<&[String]> {
        self.arg_fields.as_deref()
    }

    /// Evaluates the condition in `env`.
    pub fn eval(&self, env: &Env<'_>) -> Outcome {
        let mut vars = Vec::new();
        match eval(&self.node, env, &mut vars) {
            Val::Bool(b) => Outcome::Bool(b),
            Val::Unknown => Outcome::Unknown,
            _ => Outcome::Error,
        }
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::End, |(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.pos).map_or(0, |(o, _)| *o)
    }

    fn fail(&self, reason: &str) -> ParseError {
        ParseError {
            offset: self.offset(),
            reason: reason.to_owned(),
        }
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Tok::Punct(q) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), ParseError> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.fail(&format!("expected `{p}`")))
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Node, ParseError> {
        self.deeper()?;
        let cond = self.or()?;
        let node = if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            Node::Cond(Box::new(cond), Box::new(a), Box::new(b))
        } else {
            cond
        };
        self.depth -= 1;
        Ok(node)
    }

    fn or(&mut self) -> Result<Node, ParseError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.relation()?;
        while self.eat("&&") {
            left = Node::And(Box::new(left), Box::new(self.relation()?));
        }
        Ok(left)
    }

    fn relation(&mut self) -> Result<Node, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Punct("==") => Some(Cmp::Eq),
                Tok::Punct("!=") => Some(Cmp::Ne),
                Tok::Punct("<") => Some(Cmp::Lt),
                Tok::Punct("<=") => Some(Cmp::Le),
                Tok::Punct(">") => Some(Cmp::Gt),
                Tok::Punct(">=") => Some(Cmp::Ge),
                Tok::Ident(w) if w == "in" => None,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.unary()?;
            left = match op {
                Some(op) => Node::Compare(op, Box::new(left), Box::new(right)),
                None => Node::In(Box::new(left), Box::new(right)),
            };
        }
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        self.deeper()?;
        let node = if self.eat("!") {
            Node::Not(Box::new(self.unary()?))
        } else if self.eat("-") {
            match self.unary()? {
                Node::Int(n) => Node::Int(-n),
                Node::Float(f) => Node::Float(-f),
                other => Node::Neg(Box::new(other)),
            }
        } else {
            self.member()?
        };
        self.depth -= 1;
        Ok(node)
    }

    fn member(&mut self) -> Result<Node, ParseError> {
        let mut node = self.primary()?;
        loop {
            if self.eat(".") {
                let at = self.pos;
                let Tok::Ident(name) = self.next() else {
                    self.pos -= 1;
                    return Err(self.fail("expected a field or method name after `.`"));
                };
                if self.eat("(") {
                    node = self.method(node, &name).map_err(|mut e| {
                        if e.reason.starts_with("unknown method") {
                            e.offset = self.toks.get(at).map_or(0, |(o, _)| *o);
                        }
                        e
                    })?;
                } else {
                    node = Node::Select(Box::new(node), name);
                }
            } else if self.eat("[") {
                let index = self.expr()?;
                self.expect("]")?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else {
                return Ok(node);
            }
        }
    }

    /// `target.name(` has been read.
    fn method(&mut self, target: Node, name: &str) -> Result<Node, ParseError> {
        let func = match name {
            "startsWith" => Func::StartsWith,
            "endsWith" => Func::EndsWith,
            "contains" => Func::Contains,
            "size" => Func::Size,
            "exists" | "all" => return self.quantifier(target, name == "all"),
            other => {
                return Err(self.fail(&format!(
                    "unknown method `{other}`; supported: startsWith, endsWith, contains, size, exists, all"
                )));
            }
        };
        let args = self.args()?;
        let want = usize::from(func != Func::Size);
        if args.len() != want {
            return Err(self.fail(&format!("`{name}` takes {want} argument(s)")));
        }
        Ok(Node::Call(func, Box::new(target), args))
    }

    /// `range.exists(` or `range.all(` has been read.
    fn quantifier(&mut self, range: Node, all: bool) -> Result<Node, ParseError> {
        let Tok::Ident(var) = self.next() else {
            self.pos -= 1;
            return Err(self.fail("expected a variable name"));
        };
        if root(&var).is_some() || matches!(var.as_str(), "true" | "false" | "null" | "in") {
            return Err(self.fail(&format!("`{var}` cannot name a variable")));
        }
        self.expect(",")?;
        self.vars.push(var);
        let cond = self.expr();
        self.vars.pop();
        let cond = cond?;
        self.expect(")")?;
        Ok(Node::Quantifier {
            all,
            range: Box::new(range),
            cond: Box::new(cond),
        })
    }

    /// Arguments after `(`, through `)`.
    fn args(&mut self) -> Result<Vec<Node>, ParseError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let at = self.pos;
        Ok(match self.next() {
            Tok::Int(n) => Node::Int(n),
            Tok::Float(f) => Node::Float(f),
            Tok::Str(s) => Node::Str(s),
            Tok::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Tok::Punct("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.expr()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Node::List(items)
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Node::Bool(true),
                "false" => Node::Bool(false),
                "null" => Node::Null,
                "has" | "size" if self.eat("(") => {
                    let args = self.args()?;
                    let [arg] = <[Node; 1]>::try_from(args)
                        .map_err(|_| self.fail(&format!("`{name}` takes one argument")))?;
                    if name == "size" {
                        Node::Call(Func::Size, Box::new(arg), Vec::new())
                    } else {
                        match arg {
                            Node::Select(target, field) => Node::Has(target, field),
                            _ => return Err(self.fail("`has` takes a field selection: has(a.b)")),
                        }
                    }
                }
                _ if self.vars.contains(&name) => {
                    let depth = self.vars.iter().rposition(|v| *v == name).unwrap_or(0);
                    Node::Var(depth)
                }
                _ => match root(&name) {
                    Some(r) => {
                        self.reads_args |= r == Root::Args;
                        Node::Root(r)
                    }
                    None => {
                        self.pos = at;
                        return Err(self.fail(&format!(
                            "unknown name `{name}`; use principal, claims, request or args"
                        )));
                    }
                },
            },
            _ => {
                self.pos = at;
                return Err(self.fail("expected a value"));
            }
        })
    }
}

/// Adds to `out` the fields of `args` that `node` reads by name; `false` when it reads
/// `args` otherwise.
fn arg_fields(node: &Node, out: &mut Vec<String>) -> bool {
    let mut add = |field: &String| {
        if !out.contains(field) {
            out.push(field.clone());
        }
        true
    };
    match node {
        Node::Select(t, f) | Node::Has(t, f) if **t == Node::Root(Root::Args) => add(f),
        Node::Index(t, i) if **t == Node::Root(Root::Args) => match &**i {
            Node::Str(f) => add(f),
            _ => false,
        },
        Node::Root(Root::Args) => false,
        Node::Null
        | Node::Bool(_)
        | Node::Int(_)
        | Node::Float(_)
        | Node::Str(_)
        | Node::Root(_)
        | Node::Var(_) => true,
        Node::List(items) => items.iter().all(|n| arg_fields(n, out)),
        Node::Select(t, _) | Node::Has(t, _) | Node::Not(t) | Node::Neg(t) => arg_fields(t, out),
        Node::Index(a, b)
        | Node::And(a, b)
        | Node::Or(a, b)
        | Node::Compare(_, a, b)
        | Node::In(a, b) => arg_fields(a, out) && arg_fields(b, out),
        Node::Cond(a, b, c) => arg_fields(a, out) && arg_fields(b, out) && arg_fields(c, out),
        Node::Call(_, t, args) => arg_fields(t, out) && args.iter().all(|n| arg_fields(n, out)),
        Node::Quantifier { range, cond, .. } => arg_fields(range, out) && arg_fields(cond, out),
    }
}

/// Parses a call's `arguments` (JSON text the request parser has checked) for rules that
/// read only `fields` of it (`None`: all of it): an object keeps only those fields (the
/// others are skipped, not built), anything else is parsed whole. `None`: not JSON.
pub fn parse_args(bytes: &[u8], fields: Option<&[String]>) -> Option<Value> {
    let Some(fields) = fields.filter(|_| bytes.trim_ascii_start().first() == Some(&b'{')) else {
        return serde_json::from_slice(bytes).ok();
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = serde::Deserializer::deserialize_map(&mut de, Fields(fields)).ok()?;
    de.end().ok()?;
    Some(v)
}

/// Visits an object, building only the members named in it.
struct Fields<'f>(&'f [String]);

impl<'de> serde::de::Visitor<'de> for Fields<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if self.0.iter().any(|f| *f == key) {
                // A repeated member: the last one counts, as when the whole is parsed.
                out.insert(key.into_owned(), map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// A member's name, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> serde::de::Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

fn root(name: &str) -> Option<Root> {
    Some(match name {
        "principal" => Root::Principal,
        "claims" => Root::Claims,
        "request" => Root::Request,
        "args" => Root::Args,
        _ => return None,
    })
}

/// The result of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It holds, or does not.
    Bool(bool),
    /// It depends on what is not known yet (a call's arguments, when a list is answered).
    Unknown,
    /// It cannot be evaluated (a missing field, a type error, not a boolean).
    Error,
}

/// A call's arguments, as a condition sees them.
#[derive(Debug, Clone, Copy)]
pub enum Args<'a> {
    /// The `arguments` object of a call.
    Json(&'a Value),
    /// The method has none: an empty map.
    None,
    /// Not known yet (a list answered at the edge).
    Unknown,
}

/// What a condition is evaluated over.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// `principal`: the principal as an object (`sub`, `iss`, `email`, `teams`, `roles`,
    /// `permissions`).
    pub principal: &'a Value,
    /// `claims`: the verified token payload.
    pub claims: &'a Value,
    /// `request.method`.
    pub method: &'a str,
    /// `request.name`: the tool or prompt name, or the resource URI.
    pub name: Option<&'a str>,
    /// `request.server`: the virtual server's id.
    pub server: &'a str,
    /// `args`.
    pub args: Args<'a>,
}

#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    List(Vec<Val<'a>>),
    /// A JSON array or object, borrowed.
    Json(&'a Value),
    /// The `request` object.
    Request,
    /// An empty map (`args` of a method without arguments).
    EmptyMap,
    Unknown,
    Error,
}

fn from_json(v: &Value) -> Val<'_> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => n.as_f64().map_or(Val::Error, Val::Float),
        },
        Value::String(s) => Val::Str(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => Val::Json(v),
    }
}

fn eval<'a>(node: &'a Node, env: &Env<'a>, vars: &mut Vec<Val<'a>>) -> Val<'a> {
    match node {
        Node::Null => Val::Null,
        Node::Bool(b) => Val::Bool(*b),
        Node::Int(n) => Val::Int(*n),
        Node::Float(f) => Val::Float(*f),
        Node::Str(s) => Val::Str(Cow::Borrowed(s)),
        Node::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                match eval(i, env, vars) {
                    v @ (Val::Unknown | Val::Error) => return v,
                    v => out.push(v),
                }
            }
            Val::List(out)
        }
        Node::Root(Root::Principal) => Val::Json(env.principal),
        Node::Root(Root::Claims) => Val::Json(env.claims),
        Node::Root(Root::Request) => Val::Request,
        Node::Root(Root::Args) => match env.args {
            Args::Json(v @ Value::Object(_)) => Val::Json(v),
            Args::Json(_) => Val::Error,
            Args::None => Val::EmptyMap,
            Args::Unknown => Val::Unknown,
        },
        Node::Var(depth) => vars.get(*depth).cloned().unwrap_or(Val::Error),
        Node::Select(target, field) => select(eval(target, env, vars), field, env),
        Node::Has(target, field) => match eval(target, env, vars) {
            Val::Json(Value::Object(m)) => Val::Bool(m.contains_key(field)),
            Val::EmptyMap => Val::Bool(false),
            Val::Request => Val::Bool(match field.as_str() {
                "method" | "server" => true,
                "name" => env.name.is_some(),
                _ => false,
            }),
            Val::Unknown => Val::Unknown,
            _ => Val::Error,
        },
        Node::Index(target, index) => {
            let (t, i) = (eval(target, env, vars), eval(index, env, vars));
            index_of(t, i, env)
        }
        Node::Not(x) => match eval(x, env, vars) {
            Val::Bool(b) => Val::Bool(!b),
            Val::Unknown => Val::Unknown,
            _ => Val::Error,
        },
        Node::Neg(x) => match eval(x, env, vars) {
            Val::Int(n) => n.checked_neg().map_or(Val::Error, Val::Int),
            Val::Float(f) => Val::Float(-f),
            Val::Unknown => Val::Unknown,
            _ => Val::Error,
        },
        Node::And(a, b) => logic(eval(a, env, vars), || eval(b, env, vars), false),
        Node::Or(a, b) => {
            let a = eval(a, env, vars);
            logic(a, || eval(b, env, vars), true)
        }
        Node::Cond(c, a, b) => match eval(c, env, vars) {
            Val::Bool(true) => eval(a, env, vars),
            Val::Bool(false) => eval(b, env, vars),
            Val::Unknown => Val::Unknown,
            _ => Val::Error,
        },
        Node::Compare(op, a, b) => {
            let (a, b) = (eval(a, env, vars), eval(b, env, vars));
            compare(*op, &a, &b)
        }
        Node::In(x, range) => {
            let (x, range) = (eval(x, env, vars), eval(range, env, vars));
            contains(&range, &x)
        }
        Node::Call(func, target, args) => {
            let target = eval(target, env, vars);
            let arg = args.first().map(|a| eval(a, env, vars));
            call(*func, &target, arg.as_ref())
        }
        Node::Quantifier { all, range, cond } => {
            let items = match eval(range, env, vars) {
                Val::Unknown => return Val::Unknown,
                range => match elements(&range) {
                    Some(items) => items,
                    None => return Val::Error,
                },
            };
            // Folded like a chain of `&&` (all) or `||` (exists).
            let mut acc = Val::Bool(*all);
            for item in items {
                vars.push(item);
                let v = eval(cond, env, vars);
                vars.pop();
                acc = logic(acc, || v, !*all);
                if matches!(acc, Val::Bool(b) if b != *all) {
                    break;
                }
            }
            acc
        }
    }
}

/// `a && b` (`or: false`) or `a || b` (`or: true`) with CEL's absorption: the deciding
/// value wins over errors and unknowns on either side; unknown wins over error.
fn logic<'a>(a: Val<'a>, b: impl FnOnce() -> Val<'a>, or: bool) -> Val<'a> {
    if matches!(a, Val::Bool(x) if x == or) {
        return a;
    }
    let b = b();
    match (a, b) {
        (_, b @ Val::Bool(x)) if x == or => b,
        (Val::Bool(_), b @ Val::Bool(_)) => b,
        (Val::Unknown, _) | (_, Val::Unknown) => Val::Unknown,
        _ => Val::Error,
    }
}

fn select<'a>(target: Val<'a>, field: &str, env: &Env<'a>) -> Val<'a> {
    match target {
        Val::Json(Value::Object(m)) => m.get(field).map_or(Val::Error, from_json),
        Val::Request => match field {
            "method" => Val::Str(Cow::Borrowed(env.method)),
            "server" => Val::Str(Cow::Borrowed(env.server)),
            "name" => env.name.map_or(Val::Error, |n| Val::Str(Cow::Borrowed(n))),
            _ => Val::Error,
        },
        Val::Unknown => Val::Unknown,
        _ => Val::Error,
    }
}

fn index_of<'a>(target: Val<'a>, index: Val<'a>, env: &Env<'a>) -> Val<'a> {
    match (target, index) {
        (Val::Unknown, _) | (_, Val::Unknown) => Val::Unknown,
        (Val::Json(Value::Array(a)), i) => position(&i)
            .and_then(|i| a.get(i))
            .map_or(Val::Error, from_json),
        (Val::List(mut l), i) => match position(&i) {
            Some(i) if i < l.len() => l.swap_remove(i),
            _ => Val::Error,
        },
        (t @ (Val::Json(Value::Object(_)) | Val::Request), Val::Str(k)) => select(t, &k, env),
        _ => Val::Error,
    }
}

/// A list index: an integer, or a decimal with no fraction (as the `cel` crate reads
/// `l[1.0]`).
fn position(i: &Val<'_>) -> Option<usize> {
    match i {
        Val::Int(i) => usize::try_from(*i).ok(),
        // In range and whole, so the conversion is exact.
        Val::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 4_294_967_296.0 => Some(*f as usize),
        _ => None,
    }
}

/// Numbers compare across integer and decimal, as CEL's heterogeneous equality does.
fn number(v: &Val<'_>) -> Option<f64> {
    match v {
        // Only used where an integer meets a decimal: the precision lost above 2^53 does
        // not change which of two such numbers is larger in any rule worth writing.
        Val::Int(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        _ => None,
    }
}

fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        // Member by member, so numbers compare as numbers (`{"a": 1}` equals `{"a": 1.0}`).
        (Val::Json(Value::Object(x)), Val::Json(Value::Object(y))) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.get(k)
                        .is_some_and(|w| equal(&from_json(v), &from_json(w)))
                })
        }
        (Val::EmptyMap, Val::Json(Value::Object(m)))
        | (Val::Json(Value::Object(m)), Val::EmptyMap) => m.is_empty(),
        (Val::EmptyMap, Val::EmptyMap) => true,
        (x, y) if number(x).is_some() && number(y).is_some() => number(x) == number(y),
        (x, y) => match (elements(x), elements(y)) {
            (Some(xs), Some(ys)) if is_list(x) && is_list(y) => {
                xs.len() == ys.len() && xs.iter().zip(&ys).all(|(a, b)| equal(a, b))
            }
            _ => false,
        },
    }
}

fn is_list(v: &Val<'_>) -> bool {
    matches!(v, Val::List(_) | Val::Json(Value::Array(_)))
}

/// The elements of a list, or the keys of a map.
fn elements<'a>(v: &Val<'a>) -> Option<Vec<Val<'a>>> {
    match v {
        Val::List(l) => Some(l.clone()),
        Val::Json(Value::Array(a)) => Some(a.iter().map(from_json).collect()),
        Val::Json(Value::Object(m)) => {
            Some(m.keys().map(|k| Val::Str(Cow::Owned(k.clone()))).collect())
        }
        Val::EmptyMap => Some(Vec::new()),
        _ => None,
    }
}

fn compare(op: Cmp, a: &Val<'_>, b: &Val<'_>) -> Val<'static> {
    if matches!(a, Val::Unknown) || matches!(b, Val::Unknown) {
        return Val::Unknown;
    }
    if matches!(a, Val::Error) || matches!(b, Val::Error) {
        return Val::Error;
    }
    let order = match (a, b) {
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        // CEL orders bools: `false < true`.
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        (x, y) => match (number(x), number(y)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
    };
    use std::cmp::Ordering::{Greater, Less};
    Val::Bool(match (op, order) {
        (Cmp::Eq, _) => equal(a, b),
        (Cmp::Ne, _) => !equal(a, b),
        (_, None) => return Val::Error,
        (Cmp::Lt, Some(o)) => o == Less,
        (Cmp::Le, Some(o)) => o != Greater,
        (Cmp::Gt, Some(o)) => o == Greater,
        (Cmp::Ge, Some(o)) => o != Less,
    })
}

fn contains<'a>(range: &Val<'a>, x: &Val<'a>) -> Val<'a> {
    match (range, x) {
        (Val::Unknown, _) | (_, Val::Unknown) => Val::Unknown,
        (_, Val::Error) => Val::Error,
        (Val::Json(Value::Object(m)), Val::Str(k)) => Val::Bool(m.contains_key(k.as_ref())),
        (Val::EmptyMap, Val::Str(_)) => Val::Bool(false),
        // A JSON object's keys are strings: another key CEL can look up is never one.
        (
            Val::Json(Value::Object(_)) | Val::EmptyMap,
            Val::Int(_) | Val::Float(_) | Val::Bool(_),
        ) => Val::Bool(false),
        (r, x) if is_list(r) => {
            Val::Bool(elements(r).is_some_and(|items| items.iter().any(|i| equal(i, x))))
        }
        _ => Val::Error,
    }
}

fn call<'a>(func: Func, target: &Val<'a>, arg: Option<&Val<'a>>) -> Val<'a> {
    if matches!(target, Val::Unknown) || matches!(arg, Some(Val::Unknown)) {
        return Val::Unknown;
    }
    match (func, target, arg) {
        (Func::Size, Val::Str(s), None) => {
            Val::Int(i64::try_from(s.chars().count()).unwrap_or(i64::MAX))
        }
        (Func::Size, v, None) => match v {
            Val::List(l) => Val::Int(i64::try_from(l.len()).unwrap_or(i64::MAX)),
            Val::Json(Value::Array(a)) => Val::Int(i64::try_from(a.len()).unwrap_or(i64::MAX)),
            Val::Json(Value::Object(m)) => Val::Int(i64::try_from(m.len()).unwrap_or(i64::MAX)),
            Val::EmptyMap => Val::Int(0),
            _ => Val::Error,
        },
        (Func::StartsWith, Val::Str(s), Some(Val::Str(p))) => Val::Bool(s.starts_with(p.as_ref())),
        (Func::EndsWith, Val::Str(s), Some(Val::Str(p))) => Val::Bool(s.ends_with(p.as_ref())),
        (Func::Contains, Val::Str(s), Some(Val::Str(p))) => Val::Bool(s.contains(p.as_ref())),
        _ => Val::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env<'a>(principal: &'a Value, claims: &'a Value, args: Args<'a>) -> Env<'a> {
        Env {
            principal,
            claims,
            method: "tools/call",
            name: Some("time__now"),
            server: "team",
            args,
        }
    }

    fn run(src: &str, args: Args<'_>) -> Outcome {
        let principal = json!({"sub": "alice", "email": "alice@example.com", "teams": ["eng", "ops"],
                               "roles": ["developer"], "permissions": ["tools.execute"]});
        let claims = json!({"sub": "alice", "groups": ["g1"], "level": 3, "ratio": 0.5,
                            "nested": {"a": {"b": "c"}}, "admin": false});
        let e = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        e.eval(&env(&principal, &claims, args))
    }

    #[test]
    fn arguments_are_parsed_as_far_as_rules_read_them() {
        let fields = |src: &str| {
            Expr::parse(src)
                .unwrap()
                .arg_fields()
                .map(|f| f.iter().map(String::as_str).collect::<Vec<_>>().join(","))
        };
        assert_eq!(fields("request.name == 'x'").as_deref(), Some(""));
        assert_eq!(
            fields("has(args.path) && args.path.startsWith('/etc') || args['n'] > 2").as_deref(),
            Some("path,n")
        );
        assert_eq!(fields("args.opts.force == true").as_deref(), Some("opts"));
        for whole in [
            "size(args) > 2",
            "'path' in args",
            "args.exists(k, k == 'path')",
            "args[request.name] == 1",
            "[args][0].path == 'x'",
        ] {
            assert_eq!(fields(whole), None, "{whole}");
        }

        let text =
            br#" {"message":"long \" text","path":"/etc","tags":["a"],"path":"/tmp","n":2} "#;
        let names = ["path".to_owned(), "n".to_owned(), "absent".to_owned()];
        assert_eq!(
            parse_args(text, Some(&names)),
            // The last `path` counts, as in a whole parse; the others are not built.
            Some(json!({"path": "/tmp", "n": 2}))
        );
        let whole: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(parse_args(text, None).as_ref(), Some(&whole));
        // Escaped names are read like any other.
        assert_eq!(
            parse_args(br#"{"p\u0061th":1}"#, Some(&names)),
            Some(json!({"path": 1}))
        );
        // Not an object: parsed whole, so a rule sees what it is.
        assert_eq!(parse_args(b"[1]", Some(&names)), Some(json!([1])));
        assert_eq!(parse_args(br#"{"path":1"#, Some(&names)), None);
        assert_eq!(parse_args(br#"{"path":1} x"#, Some(&names)), None);
        // Under the same rules, the parsed subset decides as the whole would.
        let rule = "has(args.path) && args.path.startsWith('/tmp') && args.n == 2";
        let e = Expr::parse(rule).unwrap();
        let subset = parse_args(text, e.arg_fields()).unwrap();
        let (p, c) = (json!({}), json!({}));
        assert_eq!(
            e.eval(&env(&p, &c, Args::Json(&subset))),
            e.eval(&env(&p, &c, Args::Json(&whole)))
        );
        assert_eq!(
            e.eval(&env(&p, &c, Args::Json(&subset))),
            Outcome::Bool(true)
        );
    }

    #[test]
    fn conditions_evaluate_as_cel_does() {
        let args = json!({"path": "/tmp/x", "n": 2, "tags": ["a", "b"], "opts": {"force": true}});
        let a = Args::Json(&args);
        let t = Outcome::Bool(true);
        let f = Outcome::Bool(false);
        let cases: &[(&str, Outcome)] = &[
            ("true", t),
            ("!true", f),
            ("principal.sub == 'alice'", t),
            ("principal.sub != \"alice\"", f),
            ("'eng' in principal.teams", t),
            ("'hr' in principal.teams", f),
            (
                "'developer' in principal.roles && request.method == 'tools/call'",
                t,
            ),
            ("request.name.startsWith('time__')", t),
            (
                "request.name.endsWith('now') && request.server == 'team'",
                t,
            ),
            ("request.name.contains('__')", t),
            ("args.path.startsWith('/tmp/')", t),
            ("args.n <= 2 && args.n > 1", t),
            ("args.n == 2.0", t),
            ("claims.ratio < 1", t),
            ("-1 < claims.level", t),
            ("'b' in args.tags", t),
            ("args.tags[1] == 'b'", t),
            ("args['path'] == '/tmp/x'", t),
            ("args.opts.force", t),
            ("has(args.path)", t),
            ("has(args.missing)", f),
            ("has(claims.nested.a)", t),
            ("claims.nested.a.b == 'c'", t),
            ("'path' in args", t),
            ("size(args.tags) == 2 && args.tags.size() == 2", t),
            ("size('héllo') == 5", t),
            ("args.tags.exists(t, t == 'a')", t),
            ("args.tags.all(t, t == 'a')", f),
            ("args.opts.exists(k, k == 'force')", t),
            ("principal.teams.exists(t, t.startsWith('o'))", t),
            ("[1, 2, 3].all(x, x > 0)", t),
            ("claims.admin ? false : true", t),
            ("claims.level > 2 || claims.missing", t),
            // CEL's absorption: the deciding side wins over an error.
            ("claims.missing || claims.level > 2", t),
            ("claims.missing && false", f),
            ("claims.missing", Outcome::Error),
            ("claims.missing == 1", Outcome::Error),
            ("claims.level", Outcome::Error),
            ("claims.sub < 1", Outcome::Error),
            ("'a' in claims.level", Outcome::Error),
            ("claims.sub.startsWith(1)", Outcome::Error),
            ("claims.nested == claims.nested", t),
            ("[1, 'a'] == [1, 'a']", t),
            ("principal.teams == ['eng', 'ops']", t),
            ("null == null && claims.sub != null", t),
            ("'x' == 1", f),
            ("1 < 2 < 3", Outcome::Error),
            // As the `cel` crate decides them (the control plane's differential test).
            ("false < true && claims.admin <= true", t),
            ("args.tags[1.0] == 'b'", t),
            ("args.tags[0.5] == 'a'", Outcome::Error),
            ("claims.level in claims || claims.admin in args", f),
            ("null in claims", Outcome::Error),
            ("args.opts == args.opts && claims.nested != args.opts", t),
        ];
        for (src, want) in cases {
            assert_eq!(run(src, a), *want, "{src}");
        }
        // Methods without arguments see an empty map.
        assert_eq!(run("has(args.path)", Args::None), f);
        assert_eq!(run("size(args) == 0", Args::None), t);
        assert_eq!(run("args.path == 'x'", Args::None), Outcome::Error);
    }

    #[test]
    fn unknown_arguments_propagate_unless_decided_without_them() {
        let u = Args::Unknown;
        assert_eq!(run("args.path == 'x'", u), Outcome::Unknown);
        assert_eq!(run("has(args.path)", u), Outcome::Unknown);
        assert_eq!(
            run("principal.sub == 'bob' && args.n == 1", u),
            Outcome::Bool(false)
        );
        assert_eq!(
            run("args.n == 1 && principal.sub == 'bob'", u),
            Outcome::Bool(false)
        );
        assert_eq!(
            run("principal.sub == 'alice' && args.n == 1", u),
            Outcome::Unknown
        );
        assert_eq!(
            run("principal.sub == 'alice' || args.n == 1", u),
            Outcome::Bool(true)
        );
        assert_eq!(run("!(args.n == 1)", u), Outcome::Unknown);
        assert_eq!(run("args.tags.exists(t, t == 'a')", u), Outcome::Unknown);
        assert_eq!(run("claims.missing || args.n == 1", u), Outcome::Unknown);
    }

    #[test]
    fn bad_conditions_are_refused_with_a_position() {
        let cases = [
            ("", 0),
            ("principal.sub ==", 16),
            ("foo == 1", 0),
            ("args.x + 1", 7),
            ("{'a': 1}", 0),
            ("claims.sub.matches('x')", 11),
            ("has(claims)", 11),
            ("'unterminated", 0),
            ("'bad \\q escape'", 6),
            ("(true", 5),
            ("true true", 5),
            ("x.exists(principal, true)", 0),
            ("claims.l.exists(principal, true)", 25),
            ("claims.startsWith()", 19),
            ("size(1, 2)", 10),
            ("99999999999999999999", 0),
            ("claims.", 7),
            ("#", 0),
        ];
        let mut wrong = Vec::new();
        for (src, offset) in cases {
            match Expr::parse(src) {
                Err(e) if e.offset == offset => {}
                Err(e) => wrong.push(format!("{src}: {e}")),
                Ok(e) => panic!("{src} parsed: {e:?}"),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(Expr::parse(&deep).unwrap_err().reason.contains("deeply"));
        assert!(Expr::parse(&"!".repeat(100)).is_err());
        assert!(Expr::parse(&"a".repeat(MAX_RULE_BYTES + 1)).is_err());
    }

    #[test]
    fn reading_args_is_known_at_compile_time() {
        assert!(Expr::parse("args.x == 1").unwrap().reads_args);
        assert!(Expr::parse("[1].exists(a, a in args)").unwrap().reads_args);
        assert!(!Expr::parse("claims.args == 1").unwrap().reads_args);
        // A variable shadows nothing: `args` stays the root.
        assert!(
            !Expr::parse("principal.teams.exists(t, t == 'args')")
                .unwrap()
                .reads_args
        );
    }
}
