//! Authorization rule conditions, checked where they are written: `PUT /policies/{id}` (and
//! the CLI, which goes through it) and `MCPPolicy` resources. [`check`] is the one place.
//!
//! Rules are CEL. The edge does not run the `cel` crate (its module alone is 3.3 MB against
//! 0.5 MB for the whole filter, see `mcpgw_core::auth::rules`): it compiles each condition
//! with its own parser for a subset of CEL and evaluates it with a small interpreter. So a
//! condition is accepted here only when
//! 1. the `cel` crate parses it (its error, with line and column, goes back to the writer);
//! 2. every name it reads is one the edge provides (`principal` and its six fields,
//!    `claims`, `request` and its three fields, `args`, comprehension variables), every
//!    construct is one the edge's subset evaluates (anything else is refused, named), and
//!    the types that are known before a request (principal's and request's fields,
//!    literals) fit the operators they meet: `principal.sub > 1` or `request.nmae` never
//!    reach the edge;
//! 3. the edge's own compiler accepts it (`mcpgw_core::auth::rules::Expr::parse`).
//!
//! Within what is accepted, the edge decides as the `cel` crate's interpreter does (the
//! differential test `rules_differential` in the control plane's integration tests runs a
//! corpus of conditions through both). An evaluation error (a missing claim, a type
//! mismatch only a request reveals) is neither true nor false: an allow rule that fails
//! does not allow, a deny rule that fails denies.

use cel::IdedExpr;
use cel::common::ast::{CallExpr, Expr, LiteralValue, SourceInfo};
use cel::parser::Parser;
use mcpgw_core::auth::rules::{Expr as EdgeExpr, MAX_RULE_BYTES};
use mcpgw_core::snapshot::auth::Rule;

/// Why a condition is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {reason}")]
pub struct RuleError {
    /// Byte offset in the condition.
    pub offset: usize,
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
    /// Why.
    pub reason: String,
}

impl RuleError {
    fn at(src: &str, offset: usize, reason: impl Into<String>) -> RuleError {
        let offset = offset.min(src.len());
        let before = src.get(..offset).unwrap_or(src);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        RuleError {
            offset,
            line: before.matches('\n').count() + 1,
            column: before.get(line_start..).map_or(0, |l| l.chars().count()) + 1,
            reason: reason.into(),
        }
    }
}

/// Checks each rule's condition; the error names the first rule that fails by its index.
pub fn check_all(rules: &[Rule]) -> Result<(), (usize, RuleError)> {
    for (i, r) in rules.iter().enumerate() {
        check(&r.when).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// How deep the `cel` parser may recurse: the edge's own limit is 48 levels (of its
/// parser, which counts differently), so nothing the edge accepts is refused here.
const CEL_DEPTH: u16 = 64;
/// Stack of the thread that checks a condition. The `cel` parser (ANTLR) takes a few
/// kilobytes per level of nesting, more in a debug build than a tokio worker's 2 MiB hold
/// at its depth limit; the pages are only reserved until used.
const CHECK_STACK: usize = 64 << 20;

/// Checks an authorization rule condition (see the module doc), on a thread of its own (a
/// few milliseconds at worst: conditions are short).
pub fn check(src: &str) -> Result<(), RuleError> {
    if src.len() > MAX_RULE_BYTES {
        return Err(RuleError::at(
            src,
            MAX_RULE_BYTES,
            format!("longer than {MAX_RULE_BYTES} bytes"),
        ));
    }
    std::thread::scope(|scope| {
        let checking = std::thread::Builder::new()
            .name("rule-check".into())
            .stack_size(CHECK_STACK)
            .spawn_scoped(scope, || check_here(src))
            .map_err(|e| RuleError::at(src, 0, format!("cannot be checked now: {e}")))?;
        checking
            .join()
            .unwrap_or_else(|_| Err(RuleError::at(src, 0, "the CEL parser failed on it")))
    })
}

fn check_here(src: &str) -> Result<(), RuleError> {
    // The standard macros expand here, so a misused one (`has(x)`, `l.exists(1, x)`) gets
    // CEL's own message.
    Parser::new()
        .max_recursion_depth(CEL_DEPTH)
        .parse(src)
        .map_err(|e| parse_error(src, &e))?;
    // Without macros, `has`, `exists` and `all` stay the calls they are written as, which
    // is the shape the edge compiles.
    let (expr, info) = cel::Env::default()
        .with_optional_support(false)
        .parser()
        .max_recursion_depth(CEL_DEPTH)
        .parse_with_source_info(src)
        .map_err(|e| parse_error(src, &e))?;
    let mut checker = Checker {
        src,
        info: &info,
        vars: Vec::new(),
    };
    let ty = checker.expr(&expr)?;
    if !matches!(ty, Ty::Bool | Ty::Dyn) {
        return Err(RuleError::at(
            src,
            0,
            format!(
                "a rule is a condition: this is {}, not a bool",
                ty.describe()
            ),
        ));
    }
    EdgeExpr::parse(src)
        .map_err(|e| RuleError::at(src, e.offset, format!("the edge refuses it: {}", e.reason)))?;
    Ok(())
}

fn parse_error(src: &str, e: &cel::ParseErrors) -> RuleError {
    let Some(first) = e.errors.first() else {
        return RuleError::at(src, 0, "does not parse");
    };
    // `pos` is (line from 1, column from 1 in characters).
    let (line, column) = (
        usize::try_from(first.pos.0).unwrap_or(1).max(1),
        usize::try_from(first.pos.1).unwrap_or(1).max(1),
    );
    let line_start: usize = src.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let offset = src
        .get(line_start..)
        .and_then(|l| l.char_indices().nth(column - 1))
        .map_or(src.len(), |(i, _)| line_start + i);
    // The depth limit surfaces as the parser's debug text: say it plainly.
    let reason = if first.msg.contains("Recursion limit") {
        "nested too deeply".to_owned()
    } else {
        first.msg.clone()
    };
    RuleError {
        offset,
        line,
        column,
        reason,
    }
}

/// What is known of a value before a request.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    Int,
    Double,
    String,
    Null,
    List(Box<Ty>),
    /// A JSON object whose members are not known (`claims`, `args`, an object in them).
    Map,
    /// `principal`: an object with known members.
    Principal,
    /// Known only per request.
    Dyn,
}

impl Ty {
    fn describe(&self) -> String {
        match self {
            Ty::Bool => "a bool".into(),
            Ty::Int => "an int".into(),
            Ty::Double => "a double".into(),
            Ty::String => "a string".into(),
            Ty::Null => "null".into(),
            Ty::List(t) if **t == Ty::Dyn => "a list".into(),
            Ty::List(t) => format!("a list of {}", t.plural()),
            Ty::Map => "a map".into(),
            Ty::Principal => "the principal (a map)".into(),
            Ty::Dyn => "a value".into(),
        }
    }

    fn plural(&self) -> String {
        match self {
            Ty::Bool => "bools".into(),
            Ty::Int => "ints".into(),
            Ty::Double => "doubles".into(),
            Ty::String => "strings".into(),
            Ty::Null => "nulls".into(),
            Ty::List(_) => "lists".into(),
            Ty::Map | Ty::Principal => "maps".into(),
            Ty::Dyn => "values".into(),
        }
    }

    fn is(&self, want: &Ty) -> bool {
        self == want || *self == Ty::Dyn
    }

    fn number(&self) -> bool {
        matches!(self, Ty::Int | Ty::Double)
    }

    fn map(&self) -> bool {
        matches!(self, Ty::Map | Ty::Principal)
    }

    /// Whether `==` between the two can ever be true (CEL's heterogeneous equality makes
    /// it merely false otherwise: refused as a mistake, as CEL's type checker does).
    fn comparable(&self, other: &Ty) -> bool {
        match (self, other) {
            (Ty::Dyn, _) | (_, Ty::Dyn) | (Ty::Null, _) | (_, Ty::Null) => true,
            (a, b) if a.number() && b.number() => true,
            (Ty::List(a), Ty::List(b)) => a.comparable(b),
            (a, b) if a.map() && b.map() => true,
            (a, b) => a == b,
        }
    }

    fn join(a: Ty, b: Ty) -> Ty {
        if a == b { a } else { Ty::Dyn }
    }
}

/// `principal`'s members, as the edge builds it.
const PRINCIPAL_FIELDS: [&str; 6] = ["sub", "iss", "email", "teams", "roles", "permissions"];
/// `request`'s members.
const REQUEST_FIELDS: [&str; 3] = ["method", "name", "server"];
/// Top-level names.
const ROOTS: [&str; 4] = ["principal", "claims", "request", "args"];

fn principal_field(field: &str) -> Option<Ty> {
    Some(match field {
        "sub" | "iss" => Ty::String,
        // `null` when the token has none.
        "email" => Ty::Dyn,
        "teams" | "roles" | "permissions" => Ty::List(Box::new(Ty::String)),
        _ => return None,
    })
}

struct Checker<'a> {
    src: &'a str,
    info: &'a SourceInfo,
    /// Comprehension variables in scope, innermost last, with their types.
    vars: Vec<(String, Ty)>,
}

type Checked = Result<Ty, RuleError>;

impl Checker<'_> {
    fn start(&self, e: &IdedExpr) -> usize {
        self.info
            .offset_for(e.id)
            .map_or(0, |(s, _)| usize::try_from(s).unwrap_or(0))
    }

    fn fail(&self, e: &IdedExpr, reason: impl Into<String>) -> RuleError {
        RuleError::at(self.src, self.start(e), reason)
    }

    /// Where the text of `e` begins (an operator's node points at the operator).
    fn first(&self, e: &IdedExpr) -> usize {
        let own = self.start(e);
        let children: Vec<&IdedExpr> = match &e.expr {
            Expr::Call(c) => c.target.iter().map(|t| &**t).chain(&c.args).collect(),
            Expr::Select(s) => vec![&*s.operand],
            Expr::List(l) => l.elements.iter().collect(),
            _ => Vec::new(),
        };
        children
            .into_iter()
            .map(|c| self.first(c))
            .fold(own, usize::min)
    }

    /// An error about the whole of `e`, placed where it begins.
    fn fail_all(&self, e: &IdedExpr, reason: impl Into<String>) -> RuleError {
        RuleError::at(self.src, self.first(e), reason)
    }

    /// An error about a selection's field (its node points at the dot).
    fn fail_field(&self, e: &IdedExpr, reason: impl Into<String>) -> RuleError {
        let dot = self.start(e) + 1;
        let skipped = self
            .src
            .get(dot..)
            .map_or(0, |r| r.len() - r.trim_start().len());
        RuleError::at(self.src, dot + skipped, reason)
    }

    /// Where a member call's name starts (its node points at the parenthesis).
    fn method_name(&self, e: &IdedExpr, name: &str) -> RuleError {
        let paren = self.start(e);
        let at = self
            .src
            .get(..paren)
            .filter(|s| s.ends_with(name))
            .map_or(paren, |_| paren - name.len());
        RuleError::at(self.src, at, "")
    }

    fn fail_method(&self, e: &IdedExpr, name: &str, reason: impl Into<String>) -> RuleError {
        let mut err = self.method_name(e, name);
        err.reason = reason.into();
        err
    }

    /// The literal's text as written.
    fn text(&self, e: &IdedExpr) -> &str {
        self.info
            .offset_for(e.id)
            .and_then(|(s, t)| {
                let (s, t) = (usize::try_from(s).ok()?, usize::try_from(t).ok()?);
                self.src.get(s..=t.max(s))
            })
            .unwrap_or_default()
    }

    fn expr(&mut self, e: &IdedExpr) -> Checked {
        match &e.expr {
            Expr::Literal(l) => self.literal(e, l),
            Expr::Ident(name) => self.ident(e, name),
            Expr::Select(s) => {
                if s.test {
                    return Err(self.fail(e, "`has` takes a field selection: has(a.b)"));
                }
                self.select(e, &s.operand, &s.field)
            }
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                for item in &l.elements {
                    let t = self.expr(item)?;
                    elem = Some(match elem {
                        None => t,
                        Some(prev) => Ty::join(prev, t),
                    });
                }
                Ok(Ty::List(Box::new(elem.unwrap_or(Ty::Dyn))))
            }
            Expr::Call(c) => self.call(e, c),
            Expr::Map(_) => Err(self.fail(e, "map literals ({…}) are not supported at the edge")),
            Expr::Struct(_) => Err(self.fail(
                e,
                "message construction (Type{…}) is not supported at the edge",
            )),
            Expr::Comprehension(_) | Expr::Unspecified => {
                Err(self.fail(e, "this construct is not supported at the edge"))
            }
        }
    }

    fn literal(&self, e: &IdedExpr, l: &LiteralValue) -> Checked {
        let text = self
            .text(e)
            .trim_start_matches(['-', ' ', '\t', '\n', '\r']);
        match l {
            LiteralValue::Boolean(_) => Ok(Ty::Bool),
            LiteralValue::Null => Ok(Ty::Null),
            LiteralValue::Int(_) => {
                if text.starts_with("0x") || text.starts_with("0X") {
                    return Err(self.fail(
                        e,
                        "hexadecimal integers are not supported at the edge: write it in decimal",
                    ));
                }
                Ok(Ty::Int)
            }
            LiteralValue::Double(_) => {
                let plain = text.split_once('.').is_some_and(|(i, f)| {
                    !i.is_empty()
                        && !f.is_empty()
                        && i.bytes().all(|b| b.is_ascii_digit())
                        && f.bytes().all(|b| b.is_ascii_digit())
                });
                if !plain {
                    return Err(self.fail(
                        e,
                        format!(
                            "the edge reads decimals written as digits.digits (1000.0, 0.5), not {text}"
                        ),
                    ));
                }
                Ok(Ty::Double)
            }
            LiteralValue::String(_) => {
                if text.starts_with(['r', 'R']) {
                    return Err(self.fail(e, "raw strings (r'…') are not supported at the edge"));
                }
                if text.starts_with("'''") || text.starts_with("\"\"\"") {
                    return Err(self.fail(
                        e,
                        "triple-quoted strings are not supported at the edge",
                    ));
                }
                let mut chars = text.char_indices();
                while let Some((i, c)) = chars.next() {
                    if c == '\\' {
                        match chars.next() {
                            Some((_, '\\' | '\'' | '"' | 'n' | 'r' | 't')) => {}
                            _ => {
                                return Err(RuleError::at(
                                    self.src,
                                    self.start(e) + i,
                                    "the edge reads the escapes \\\\ \\' \\\" \\n \\r \\t only",
                                ));
                            }
                        }
                    }
                }
                Ok(Ty::String)
            }
            LiteralValue::UInt(_) => Err(self.fail(
                e,
                "unsigned integers (1u) are not supported at the edge: claims and arguments are JSON numbers",
            )),
            LiteralValue::Bytes(_) => {
                Err(self.fail(e, "bytes literals (b'…') are not supported at the edge"))
            }
        }
    }

    fn ident(&self, e: &IdedExpr, name: &str) -> Checked {
        if let Some((_, t)) = self.vars.iter().rev().find(|(v, _)| v == name) {
            return Ok(t.clone());
        }
        Ok(match name {
            "principal" => Ty::Principal,
            "claims" | "args" => Ty::Map,
            "request" => {
                return Err(self.fail(
                    e,
                    "`request` is read by field: request.method, request.name, request.server",
                ));
            }
            _ => {
                return Err(self.fail(
                    e,
                    format!(
                        "unknown name `{name}`: rules read principal, claims, request and args"
                    ),
                ));
            }
        })
    }

    /// `operand.field`.
    fn select(&mut self, e: &IdedExpr, operand: &IdedExpr, field: &str) -> Checked {
        if self.is_request(operand) {
            return if REQUEST_FIELDS.contains(&field) {
                Ok(Ty::String)
            } else {
                Err(self.fail_field(
                    e,
                    format!(
                        "request has no field `{field}`: it has {}",
                        REQUEST_FIELDS.join(", ")
                    ),
                ))
            };
        }
        match self.expr(operand)? {
            Ty::Principal => principal_field(field).ok_or_else(|| {
                self.fail_field(
                    e,
                    format!(
                        "principal has no field `{field}`: it has {} (the token's own claims are in `claims`)",
                        PRINCIPAL_FIELDS.join(", ")
                    ),
                )
            }),
            Ty::Map | Ty::Dyn => Ok(Ty::Dyn),
            t => Err(self.fail_field(
                e,
                format!("`.{field}` reads a field, but this is {}", t.describe()),
            )),
        }
    }

    /// Whether `e` is the root `request` (not a variable of that name: the edge refuses
    /// those anyway).
    fn is_request(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Ident(n) if n == "request" && !self.vars.iter().any(|(v, _)| v == n))
    }

    fn want(&mut self, e: &IdedExpr, want: &Ty, role: &str) -> Checked {
        let t = self.expr(e)?;
        if !t.is(want) {
            return Err(self.fail_all(
                e,
                format!("{role} is {}, not {}", t.describe(), want.describe()),
            ));
        }
        Ok(t)
    }

    fn call(&mut self, e: &IdedExpr, c: &CallExpr) -> Checked {
        let name = c.func_name.as_str();
        let args = c.args.as_slice();
        match (name, &c.target, args) {
            ("_&&_" | "_||_", None, [a, b]) => {
                let op = if name == "_&&_" { "&&" } else { "||" };
                self.want(a, &Ty::Bool, &format!("the left side of {op}"))?;
                self.want(b, &Ty::Bool, &format!("the right side of {op}"))?;
                Ok(Ty::Bool)
            }
            ("!_", None, [a]) => {
                self.want(a, &Ty::Bool, "the operand of !")?;
                Ok(Ty::Bool)
            }
            ("-_", None, [a]) => {
                let t = self.expr(a)?;
                if !(t.number() || t == Ty::Dyn) {
                    return Err(self.fail_all(a, format!("the operand of - is {}", t.describe())));
                }
                Ok(t)
            }
            ("_==_" | "_!=_", None, [a, b]) => {
                let (ta, tb) = (self.expr(a)?, self.expr(b)?);
                if !ta.comparable(&tb) {
                    return Err(self.fail(
                        e,
                        format!(
                            "{} compared with {}: never equal",
                            ta.describe(),
                            tb.describe()
                        ),
                    ));
                }
                Ok(Ty::Bool)
            }
            ("_<_" | "_<=_" | "_>_" | "_>=_", None, [a, b]) => {
                let (ta, tb) = (self.expr(a)?, self.expr(b)?);
                let ordered =
                    |t: &Ty| matches!(t, Ty::Int | Ty::Double | Ty::String | Ty::Bool | Ty::Dyn);
                let same = match (&ta, &tb) {
                    (Ty::Dyn, _) | (_, Ty::Dyn) => true,
                    (x, y) if x.number() && y.number() => true,
                    (x, y) => x == y,
                };
                if !ordered(&ta) || !ordered(&tb) || !same {
                    return Err(self.fail(
                        e,
                        format!(
                            "{} and {} have no order (numbers, strings and bools do)",
                            ta.describe(),
                            tb.describe()
                        ),
                    ));
                }
                Ok(Ty::Bool)
            }
            ("@in", None, [x, range]) => {
                let tx = self.expr(x)?;
                match self.expr(range)? {
                    Ty::List(elem) => {
                        if !tx.comparable(&elem) {
                            return Err(self.fail(
                                e,
                                format!(
                                    "{} is never in {}",
                                    tx.describe(),
                                    Ty::List(elem).describe()
                                ),
                            ));
                        }
                    }
                    Ty::Map | Ty::Principal => {
                        if !tx.is(&Ty::String) {
                            return Err(self.fail(
                                e,
                                format!("a map's keys are strings: {} is never one", tx.describe()),
                            ));
                        }
                    }
                    Ty::Dyn => {}
                    t => {
                        return Err(self.fail(
                            e,
                            format!(
                                "`in` looks in a list or a map's keys, not in {}",
                                t.describe()
                            ),
                        ));
                    }
                }
                Ok(Ty::Bool)
            }
            ("_[_]", None, [target, index]) => self.index(e, target, index),
            ("_?_:_", None, [cond, a, b]) => {
                self.want(cond, &Ty::Bool, "the condition of ?:")?;
                let (ta, tb) = (self.expr(a)?, self.expr(b)?);
                Ok(Ty::join(ta, tb))
            }
            ("has", None, [arg]) => {
                let Expr::Select(s) = &arg.expr else {
                    return Err(self.fail(arg, "`has` takes a field selection: has(a.b)"));
                };
                // Checks the field against the known members.
                self.select(arg, &s.operand, &s.field)?;
                Ok(Ty::Bool)
            }
            ("size", None, [arg]) => self.size(arg),
            ("size", Some(target), []) => self.size(target),
            ("startsWith" | "endsWith" | "contains", Some(target), [arg]) => {
                let t = self.expr(target)?;
                if !t.is(&Ty::String) {
                    return Err(self.fail_method(
                        e,
                        name,
                        format!(
                            "`{name}` is a string's method, and this is {}",
                            t.describe()
                        ),
                    ));
                }
                self.want(arg, &Ty::String, &format!("the argument of `{name}`"))?;
                Ok(Ty::Bool)
            }
            ("exists" | "all", Some(range), [var, cond]) => {
                let Expr::Ident(v) = &var.expr else {
                    return Err(self.fail(var, "expected a variable name"));
                };
                if ROOTS.contains(&v.as_str()) {
                    return Err(self.fail(var, format!("`{v}` cannot name a variable")));
                }
                let elem = match self.expr(range)? {
                    Ty::List(t) => *t,
                    Ty::Map | Ty::Principal => Ty::String,
                    Ty::Dyn => Ty::Dyn,
                    t => {
                        return Err(self.fail_method(
                            e,
                            name,
                            format!(
                                "`{name}` ranges over a list or a map's keys, not {}",
                                t.describe()
                            ),
                        ));
                    }
                };
                self.vars.push((v.clone(), elem));
                let r = self.want(cond, &Ty::Bool, &format!("the condition of `{name}`"));
                self.vars.pop();
                r?;
                Ok(Ty::Bool)
            }
            _ => Err(self.unsupported(e, c)),
        }
    }

    fn size(&mut self, arg: &IdedExpr) -> Checked {
        let t = self.expr(arg)?;
        if !matches!(
            t,
            Ty::String | Ty::List(_) | Ty::Map | Ty::Principal | Ty::Dyn
        ) {
            return Err(self.fail_all(
                arg,
                format!(
                    "`size` takes a string, a list or a map, not {}",
                    t.describe()
                ),
            ));
        }
        Ok(Ty::Int)
    }

    fn index(&mut self, e: &IdedExpr, target: &IdedExpr, index: &IdedExpr) -> Checked {
        if self.is_request(target) {
            let ti = self.want(index, &Ty::String, "request's index")?;
            if let (Ty::String, Expr::Literal(LiteralValue::String(f))) = (&ti, &index.expr) {
                let f: &str = f.inner();
                if !REQUEST_FIELDS.contains(&f) {
                    return Err(self.fail(
                        index,
                        format!(
                            "request has no field `{f}`: it has {}",
                            REQUEST_FIELDS.join(", ")
                        ),
                    ));
                }
            }
            return Ok(Ty::String);
        }
        let tt = self.expr(target)?;
        let ti = self.expr(index)?;
        match tt {
            Ty::List(elem) => {
                if !(ti.number() || ti == Ty::Dyn) {
                    return Err(self.fail_all(
                        index,
                        format!("a list's index is a number, not {}", ti.describe()),
                    ));
                }
                Ok(*elem)
            }
            Ty::Map | Ty::Principal => {
                if !ti.is(&Ty::String) {
                    return Err(self.fail_all(
                        index,
                        format!("a map's keys are strings, not {}", ti.describe()),
                    ));
                }
                if let (Ty::Principal, Expr::Literal(LiteralValue::String(f))) = (&tt, &index.expr)
                {
                    let f: &str = f.inner();
                    return principal_field(f).ok_or_else(|| {
                        self.fail(
                            index,
                            format!(
                                "principal has no field `{f}`: it has {}",
                                PRINCIPAL_FIELDS.join(", ")
                            ),
                        )
                    });
                }
                Ok(Ty::Dyn)
            }
            Ty::Dyn => Ok(Ty::Dyn),
            t => Err(self.fail(e, format!("{} cannot be indexed", t.describe()))),
        }
    }

    /// What a call the edge does not evaluate is, named.
    fn unsupported(&self, e: &IdedExpr, c: &CallExpr) -> RuleError {
        let name = c.func_name.as_str();
        let op = match name {
            "_+_" => Some("+"),
            "_-_" => Some("-"),
            "_*_" => Some("*"),
            "_/_" => Some("/"),
            "_%_" => Some("%"),
            _ => None,
        };
        if let Some(op) = op {
            return self.fail(
                e,
                format!("arithmetic (`{op}`) is not supported at the edge"),
            );
        }
        let reason = match name {
            "matches" => "`matches` (regular expressions) is not supported at the edge: use startsWith, endsWith or contains".to_owned(),
            "exists_one" | "map" | "filter" | "transformList" | "transformMap" => format!(
                "the `{name}` macro is not supported at the edge: use exists or all"
            ),
            "int" | "uint" | "double" | "string" | "bool" | "bytes" | "dyn" | "type"
            | "duration" | "timestamp" => format!(
                "type conversions (`{name}(…)`) are not supported at the edge"
            ),
            "has" | "size" | "startsWith" | "endsWith" | "contains" | "exists" | "all" => {
                let how = match name {
                    "has" => "has(a.b)",
                    "size" => "size(x) or x.size()",
                    "exists" | "all" => "list.exists(v, condition)",
                    _ => "s.startsWith('p')",
                };
                format!("`{name}` is written {how}")
            }
            _ if c.target.is_some() => format!(
                "unknown method `{name}`: the edge has startsWith, endsWith, contains, size, exists and all"
            ),
            _ => format!(
                "unknown function `{name}`: the edge has has and size (and the methods startsWith, endsWith, contains, size, exists, all)"
            ),
        };
        if c.target.is_some() {
            self.fail_method(e, name, reason)
        } else {
            // A global call's node is its parenthesis: point at the name.
            let paren = self.start(e);
            let at = self
                .src
                .get(..paren)
                .filter(|s| s.trim_end().ends_with(name))
                .map_or(paren, |s| s.trim_end().len() - name.len());
            RuleError::at(self.src, at, reason)
        }
    }
}
