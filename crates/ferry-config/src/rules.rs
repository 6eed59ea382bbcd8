//! The validation rule language: a hand-written lexer, a recursive-descent parser and an
//! evaluator that never panics.
//!
//! ```text
//! rule       := or
//! or         := and ( OR and )*                  -- AND binds tighter than OR
//! and        := unary ( AND unary )*
//! unary      := NOT unary | primary
//! primary    := '(' or ')' | predicate
//! predicate  := operand EQ operand
//!             | operand NEQ operand
//!             | operand [NOT] IN RANGE operand operand   -- inclusive at both ends
//!             | operand [IS] [NOT] NULL
//!             | operand [NOT] LOOKUP redis-key           -- member of a set, or field of a hash
//! operand    := values '[' index ']' | text | ts | key | ref.<field> | number | 'string' | "string"
//! ```
//!
//! `ref.<field>` is a reference field an upstream `enrich` stage added to the record (its
//! `ref` object); NULL when the record has no such field, or was not enriched.
//!
//! Keywords are case-insensitive. The LOOKUP target is a bare word (`ferry:allowed`) or a
//! quoted string, used as the Redis key verbatim.
//!
//! NULL semantics, chosen so a rule never passes by accident on missing data:
//! - `values[i]` past the end of the record is NULL; a NaN value is NULL too (a NaN
//!   reading is missing data, and NaN compares unequal to everything anyway).
//! - `text` is NULL when the record carries no text or an empty one.
//! - EQ, NEQ, IN RANGE and LOOKUP are false when any operand is NULL (as in SQL, test
//!   missing data with NULL / NOT NULL). Their `NOT` forms are the plain negation.
//! - EQ between a number and a string compares numerically if the string parses as a
//!   number, else the two are unequal. IN RANGE needs numbers: a string that does not
//!   parse as a number makes it false.

use std::fmt;

/// Where a parse went wrong: `column` is 1-based, in characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

/// A parsed rule expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Eq(Operand, Operand),
    Neq(Operand, Operand),
    InRange {
        value: Operand,
        low: Operand,
        high: Operand,
    },
    IsNull(Operand),
    Lookup {
        value: Operand,
        redis_key: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Value(usize),
    Text,
    Timestamp,
    Key,
    /// `ref.<field>`: a field of the enriched record's `ref` object.
    Reference(String),
    Number(f64),
    String(String),
}

/// A scalar the evaluator works with. NULL is missing data.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Number(f64),
    String(String),
}

impl Scalar {
    fn number(value: f64) -> Self {
        if value.is_nan() {
            Self::Null
        } else {
            Self::Number(value)
        }
    }

    fn as_number(&self) -> Option<f64> {
        match self {
            Self::Null => None,
            Self::Number(n) => Some(*n),
            Self::String(s) => s.trim().parse::<f64>().ok().filter(|n| !n.is_nan()),
        }
    }

    /// The text a LOOKUP searches for: integers print without a fraction so `values[0]`
    /// holding 7.0 finds the member `7`.
    pub fn lookup_member(&self) -> Option<String> {
        match self {
            Self::Null => None,
            Self::Number(n) => Some(format_number(*n)),
            Self::String(s) => Some(s.clone()),
        }
    }
}

/// Prints a float the shortest way that reads back the same; integral values without `.0`.
pub fn format_number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// What a rule sees of a record.
pub trait RecordView {
    fn key(&self) -> &str;
    fn timestamp_ms(&self) -> i64;
    fn values(&self) -> &[f64];
    fn text(&self) -> Option<&str>;
    /// A reference field an upstream enrich stage added; none unless the record is enriched.
    fn reference(&self, _field: &str) -> Option<&str> {
        None
    }
}

/// A record in plain fields: for evaluating rules outside a stage (tests, fuzzing, tools).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlainRecord {
    pub key: String,
    pub timestamp_ms: i64,
    pub values: Vec<f64>,
    pub text: Option<String>,
}

impl RecordView for PlainRecord {
    fn key(&self) -> &str {
        &self.key
    }
    fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }
    fn values(&self) -> &[f64] {
        &self.values
    }
    fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
}

/// Answers LOOKUP: is `member` in the set, or a field of the hash, at `redis_key`?
/// The runtime fetches the answers for a whole batch up front so evaluation stays pure.
pub trait LookupSource {
    fn contains(&self, redis_key: &str, member: &str) -> bool;
}

impl Operand {
    pub fn resolve(&self, record: &dyn RecordView) -> Scalar {
        match self {
            Self::Value(index) => record
                .values()
                .get(*index)
                .map_or(Scalar::Null, |v| Scalar::number(*v)),
            Self::Text => match record.text() {
                Some(text) if !text.is_empty() => Scalar::String(text.to_owned()),
                _ => Scalar::Null,
            },
            Self::Timestamp => Scalar::Number(record.timestamp_ms() as f64),
            Self::Key => Scalar::String(record.key().to_owned()),
            Self::Reference(field) => match record.reference(field) {
                Some(value) if !value.is_empty() => Scalar::String(value.to_owned()),
                _ => Scalar::Null,
            },
            Self::Number(n) => Scalar::number(*n),
            Self::String(s) => Scalar::String(s.clone()),
        }
    }
}

impl Expr {
    /// Evaluates the rule against one record. Total: every input gives true or false.
    pub fn evaluate(&self, record: &dyn RecordView, lookups: &dyn LookupSource) -> bool {
        match self {
            Self::And(left, right) => {
                left.evaluate(record, lookups) && right.evaluate(record, lookups)
            }
            Self::Or(left, right) => {
                left.evaluate(record, lookups) || right.evaluate(record, lookups)
            }
            Self::Not(inner) => !inner.evaluate(record, lookups),
            Self::Eq(left, right) => {
                scalars_equal(&left.resolve(record), &right.resolve(record)) == Some(true)
            }
            Self::Neq(left, right) => {
                scalars_equal(&left.resolve(record), &right.resolve(record)) == Some(false)
            }
            Self::InRange { value, low, high } => {
                let (Some(value), Some(low), Some(high)) = (
                    value.resolve(record).as_number(),
                    low.resolve(record).as_number(),
                    high.resolve(record).as_number(),
                ) else {
                    return false;
                };
                low <= value && value <= high
            }
            Self::IsNull(operand) => operand.resolve(record) == Scalar::Null,
            Self::Lookup { value, redis_key } => value
                .resolve(record)
                .lookup_member()
                .is_some_and(|member| lookups.contains(redis_key, &member)),
        }
    }

    /// Calls `visit(redis_key, member)` for every LOOKUP this record would ask, so the
    /// runtime can fetch all answers of a batch in one round trip.
    pub fn for_each_lookup(&self, record: &dyn RecordView, visit: &mut dyn FnMut(&str, String)) {
        match self {
            Self::And(left, right) | Self::Or(left, right) => {
                left.for_each_lookup(record, visit);
                right.for_each_lookup(record, visit);
            }
            Self::Not(inner) => inner.for_each_lookup(record, visit),
            Self::Lookup { value, redis_key } => {
                if let Some(member) = value.resolve(record).lookup_member() {
                    visit(redis_key, member);
                }
            }
            Self::Eq(..) | Self::Neq(..) | Self::InRange { .. } | Self::IsNull(_) => {}
        }
    }
}

/// `None` when either side is NULL: neither equal nor unequal.
fn scalars_equal(left: &Scalar, right: &Scalar) -> Option<bool> {
    match (left, right) {
        (Scalar::Null, _) | (_, Scalar::Null) => None,
        (Scalar::Number(a), Scalar::Number(b)) => Some(a == b),
        (Scalar::String(a), Scalar::String(b)) => Some(a == b),
        (Scalar::Number(n), other @ Scalar::String(_))
        | (other @ Scalar::String(_), Scalar::Number(n)) => {
            Some(other.as_number().is_some_and(|parsed| parsed == *n))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    /// A bare word: keyword, field name, or LOOKUP target.
    Word(String),
    Number(f64),
    Quoted(String),
    LeftParen,
    RightParen,
    LeftBracket,
    RightBracket,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    /// 1-based character column of the token's first character.
    column: usize,
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Word(word) => write!(f, "`{word}`"),
            Self::Number(n) => write!(f, "number {n}"),
            Self::Quoted(s) => write!(f, "string {s:?}"),
            Self::LeftParen => f.write_str("`(`"),
            Self::RightParen => f.write_str("`)`"),
            Self::LeftBracket => f.write_str("`[`"),
            Self::RightBracket => f.write_str("`]`"),
        }
    }
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '(' | ')' | '[' | ']' | '\'' | '"')
}

fn lex(input: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let column = at + 1;
        let single = match c {
            '(' => Some(TokenKind::LeftParen),
            ')' => Some(TokenKind::RightParen),
            '[' => Some(TokenKind::LeftBracket),
            ']' => Some(TokenKind::RightBracket),
            _ => None,
        };
        if let Some(kind) = single {
            tokens.push(Token { kind, column });
            at += 1;
        } else if c.is_whitespace() {
            at += 1;
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            let mut end = at + 1;
            loop {
                match chars.get(end) {
                    None => {
                        return Err(ParseError {
                            column,
                            message: format!("unterminated string: no closing {c}"),
                        });
                    }
                    Some('\\') if chars.get(end + 1).is_some() => {
                        if let Some(escaped) = chars.get(end + 1) {
                            text.push(*escaped);
                        }
                        end += 2;
                    }
                    Some(quote) if *quote == c => break,
                    Some(other) => {
                        text.push(*other);
                        end += 1;
                    }
                }
            }
            tokens.push(Token {
                kind: TokenKind::Quoted(text),
                column,
            });
            at = end + 1;
        } else {
            let start = at;
            while at < chars.len() && is_word_char(chars[at]) {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let starts_numeric = c.is_ascii_digit()
                || ((c == '-' || c == '+' || c == '.')
                    && chars
                        .get(start + 1)
                        .is_some_and(|n| n.is_ascii_digit() || *n == '.'));
            let kind = if starts_numeric {
                match word.parse::<f64>() {
                    Ok(n) if n.is_finite() => TokenKind::Number(n),
                    _ => {
                        return Err(ParseError {
                            column,
                            message: format!("`{word}` is not a valid number"),
                        });
                    }
                }
            } else {
                TokenKind::Word(word)
            };
            tokens.push(Token { kind, column });
        }
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------------------
// Parser

/// Parses one rule expression.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let tokens = lex(input)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        end_column: input.chars().count() + 1,
        predicates: 0,
    };
    if parser.tokens.is_empty() {
        return Err(ParseError {
            column: 1,
            message: "empty rule: expected an expression such as `values[0] IN RANGE 0 100`"
                .to_owned(),
        });
    }
    let expr = parser.or()?;
    if let Some(token) = parser.peek() {
        return Err(ParseError {
            column: token.column,
            message: format!(
                "unexpected {} after a complete expression; expected AND, OR or the end",
                token.kind
            ),
        });
    }
    Ok(expr)
}

/// Deep nesting is refused so a hostile rule cannot overflow the stack.
const MAX_DEPTH: usize = 64;
/// So is a long chain: `a AND b AND c ...` is a tree as deep as it is long, and evaluating
/// (or dropping) 10,000 of them overflowed a 2 MiB thread stack. The CRD's 4096 characters
/// hold about 400 predicates; hand-written worker configs have no length limit.
const MAX_PREDICATES: usize = 1000;

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    end_column: usize,
    predicates: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        self.peek_keyword_at(0, keyword)
    }

    fn peek_keyword_at(&self, ahead: usize, keyword: &str) -> bool {
        matches!(
            self.tokens.get(self.at + ahead),
            Some(Token { kind: TokenKind::Word(word), .. }) if word.eq_ignore_ascii_case(keyword)
        )
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek_keyword(keyword);
        if found {
            self.at += 1;
        }
        found
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        if token.is_some() {
            self.at += 1;
        }
        token
    }

    fn error_here(&self, expected: &str) -> ParseError {
        match self.peek() {
            Some(token) => ParseError {
                column: token.column,
                message: format!("expected {expected}, found {}", token.kind),
            },
            None => ParseError {
                column: self.end_column,
                message: format!("expected {expected}, found the end of the rule"),
            },
        }
    }

    fn expect_keyword(&mut self, keyword: &str, context: &str) -> Result<(), ParseError> {
        if self.eat_keyword(keyword) {
            Ok(())
        } else {
            Err(self.error_here(&format!("{keyword} {context}")))
        }
    }

    fn nesting_check(&self, depth: usize) -> Result<(), ParseError> {
        if depth > MAX_DEPTH {
            let column = self.peek().map_or(self.end_column, |t| t.column);
            return Err(ParseError {
                column,
                message: format!("expression nested deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.or_at(0)
    }

    fn or_at(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut left = self.and(depth)?;
        while self.eat_keyword("OR") {
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ParseError> {
        let mut left = self.unary(depth)?;
        while self.eat_keyword("AND") {
            let right = self.unary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        self.nesting_check(depth)?;
        if self.eat_keyword("NOT") {
            let inner = self.unary(depth + 1)?;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, ParseError> {
        if let Some(Token {
            kind: TokenKind::LeftParen,
            column,
        }) = self.peek().cloned()
        {
            self.at += 1;
            let inner = self.or_at(depth + 1)?;
            return match self.next() {
                Some(Token {
                    kind: TokenKind::RightParen,
                    ..
                }) => Ok(inner),
                Some(token) => Err(ParseError {
                    column: token.column,
                    message: format!(
                        "expected `)` to close the `(` at column {column}, found {}",
                        token.kind
                    ),
                }),
                None => Err(ParseError {
                    column: self.end_column,
                    message: format!("missing `)` to close the `(` at column {column}"),
                }),
            };
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, ParseError> {
        self.predicates += 1;
        if self.predicates > MAX_PREDICATES {
            return Err(self.error_here(&format!(
                "the end of the rule: it has more than {MAX_PREDICATES} predicates"
            )));
        }
        let value = self.operand()?;
        if self.eat_keyword("EQ") {
            let right = self.operand()?;
            return Ok(Expr::Eq(value, right));
        }
        if self.eat_keyword("NEQ") {
            let right = self.operand()?;
            return Ok(Expr::Neq(value, right));
        }
        if self.eat_keyword("IS") {
            let negated = self.eat_keyword("NOT");
            self.expect_keyword("NULL", "after IS")?;
            return Ok(negate_if(negated, Expr::IsNull(value)));
        }
        if self.eat_keyword("NULL") {
            return Ok(Expr::IsNull(value));
        }
        let negated = self.eat_keyword("NOT");
        if self.eat_keyword("NULL") {
            return Ok(negate_if(negated, Expr::IsNull(value)));
        }
        if self.eat_keyword("IN") {
            self.expect_keyword("RANGE", "after IN (write `IN RANGE low high`)")?;
            let low_column = self.peek().map_or(self.end_column, |t| t.column);
            let low = self.operand()?;
            let high = self.operand()?;
            if let (Operand::Number(lo), Operand::Number(hi)) = (&low, &high)
                && lo > hi
            {
                return Err(ParseError {
                    column: low_column,
                    message: format!("empty range: low {lo} is above high {hi}"),
                });
            }
            return Ok(negate_if(negated, Expr::InRange { value, low, high }));
        }
        if self.eat_keyword("LOOKUP") {
            let redis_key = match self.peek() {
                Some(Token {
                    kind: TokenKind::Word(word) | TokenKind::Quoted(word),
                    ..
                }) if !word.is_empty() => word.clone(),
                _ => return Err(self.error_here("a Redis key after LOOKUP")),
            };
            self.at += 1;
            return Ok(negate_if(negated, Expr::Lookup { value, redis_key }));
        }
        if negated {
            return Err(self.error_here("NULL, IN RANGE or LOOKUP after NOT"));
        }
        Err(self.error_here("EQ, NEQ, IN RANGE, NULL, NOT NULL or LOOKUP after an operand"))
    }

    fn operand(&mut self) -> Result<Operand, ParseError> {
        let Some(token) = self.peek().cloned() else {
            return Err(
                self.error_here("an operand (values[i], text, ts, key, a number or a string)")
            );
        };
        match token.kind {
            TokenKind::Number(n) => {
                self.at += 1;
                Ok(Operand::Number(n))
            }
            TokenKind::Quoted(text) => {
                self.at += 1;
                Ok(Operand::String(text))
            }
            TokenKind::Word(word) => {
                let lower = word.to_ascii_lowercase();
                let operand = match lower.as_str() {
                    _ if lower.starts_with("ref.") && word.len() > 4 => {
                        Operand::Reference(word[4..].to_owned())
                    }
                    "text" => Operand::Text,
                    "ts" => Operand::Timestamp,
                    "key" => Operand::Key,
                    "values" => {
                        self.at += 1;
                        return self.value_index();
                    }
                    _ => {
                        return Err(ParseError {
                            column: token.column,
                            message: format!(
                                "unknown operand `{word}`; expected values[i], text, ts, key, ref.<field>, a number or a quoted string"
                            ),
                        });
                    }
                };
                self.at += 1;
                Ok(operand)
            }
            _ => {
                Err(self.error_here("an operand (values[i], text, ts, key, a number or a string)"))
            }
        }
    }

    fn value_index(&mut self) -> Result<Operand, ParseError> {
        if !matches!(self.peek().map(|t| &t.kind), Some(TokenKind::LeftBracket)) {
            return Err(self.error_here("`[` after values (write values[0])"));
        }
        self.at += 1;
        let index = match self.peek().map(|t| &t.kind) {
            Some(TokenKind::Number(n))
                if *n >= 0.0 && n.fract() == 0.0 && *n <= u32::MAX as f64 =>
            {
                *n as usize
            }
            _ => return Err(self.error_here("a non-negative integer index")),
        };
        self.at += 1;
        if !matches!(self.peek().map(|t| &t.kind), Some(TokenKind::RightBracket)) {
            return Err(self.error_here("`]` after the index"));
        }
        self.at += 1;
        Ok(Operand::Value(index))
    }
}

fn negate_if(negated: bool, expr: Expr) -> Expr {
    if negated {
        Expr::Not(Box::new(expr))
    } else {
        expr
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[derive(Default)]
    struct FakeLookups(HashMap<String, HashSet<String>>);

    impl LookupSource for FakeLookups {
        fn contains(&self, redis_key: &str, member: &str) -> bool {
            self.0
                .get(redis_key)
                .is_some_and(|set| set.contains(member))
        }
    }

    fn record() -> PlainRecord {
        PlainRecord {
            key: "sensor-1".to_owned(),
            timestamp_ms: 1_700_000_000_000,
            values: vec![12.5, -3.0, f64::NAN, 7.0],
            text: Some("ok".to_owned()),
        }
    }

    fn eval(rule: &str) -> bool {
        let mut lookups = FakeLookups::default();
        lookups.0.insert(
            "ferry:allowed".to_owned(),
            ["sensor-1", "7"].iter().map(|s| (*s).to_owned()).collect(),
        );
        parse(rule)
            .unwrap_or_else(|err| panic!("{rule}: {err}"))
            .evaluate(&record(), &lookups)
    }

    fn parse_error(rule: &str) -> ParseError {
        parse(rule).expect_err(rule)
    }

    #[test]
    fn parses_operands_and_predicates() {
        assert_eq!(
            parse("values[3] IN RANGE -1 1e3").unwrap(),
            Expr::InRange {
                value: Operand::Value(3),
                low: Operand::Number(-1.0),
                high: Operand::Number(1000.0)
            }
        );
        assert_eq!(
            parse("text eq 'a b'").unwrap(),
            Expr::Eq(Operand::Text, Operand::String("a b".to_owned()))
        );
        assert_eq!(
            parse("key NOT LOOKUP ferry:keys").unwrap(),
            Expr::Not(Box::new(Expr::Lookup {
                value: Operand::Key,
                redis_key: "ferry:keys".to_owned()
            }))
        );
        assert_eq!(
            parse("ts IS NOT NULL").unwrap(),
            Expr::Not(Box::new(Expr::IsNull(Operand::Timestamp)))
        );
        assert_eq!(
            parse(r#"text NEQ "say \"hi\"""#).unwrap(),
            Expr::Neq(Operand::Text, Operand::String("say \"hi\"".to_owned()))
        );
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let a = || Expr::IsNull(Operand::Value(0));
        let b = || Expr::IsNull(Operand::Value(1));
        let c = || Expr::IsNull(Operand::Value(2));
        assert_eq!(
            parse("values[0] NULL OR values[1] NULL AND values[2] NULL").unwrap(),
            Expr::Or(
                Box::new(a()),
                Box::new(Expr::And(Box::new(b()), Box::new(c())))
            )
        );
        assert_eq!(
            parse("values[0] NULL AND values[1] NULL OR values[2] NULL").unwrap(),
            Expr::Or(
                Box::new(Expr::And(Box::new(a()), Box::new(b()))),
                Box::new(c())
            )
        );
        assert_eq!(
            parse("(values[0] NULL OR values[1] NULL) AND values[2] NULL").unwrap(),
            Expr::And(
                Box::new(Expr::Or(Box::new(a()), Box::new(b()))),
                Box::new(c())
            )
        );
        // true OR (false AND false) is true; (true OR false) AND false would be false.
        assert!(eval("key EQ 'sensor-1' OR ts EQ 0 AND text NULL"));
    }

    #[test]
    fn errors_say_where_and_what() {
        let err = parse_error("values[0] IN RANGE 0");
        assert_eq!(err.column, 21, "{err}");
        assert!(err.message.contains("operand"), "{err}");

        let err = parse_error("values[0] BETWEEN 1 2");
        assert_eq!(err.column, 11);
        assert!(err.message.contains("`BETWEEN`"), "{err}");

        let err = parse_error("(text NULL");
        assert_eq!(err.column, 11);
        assert!(err.message.contains("column 1"), "{err}");

        let err = parse_error("speed EQ 1");
        assert_eq!(err.column, 1);
        assert!(err.message.contains("unknown operand `speed`"), "{err}");

        let err = parse_error("values[x] NULL");
        assert_eq!(err.column, 8);

        let err = parse_error("values[-1] NULL");
        assert_eq!(err.column, 8);

        let err = parse_error("text EQ 'open");
        assert_eq!(err.column, 9);
        assert!(err.message.contains("unterminated"), "{err}");

        let err = parse_error("text NULL text NULL");
        assert_eq!(err.column, 11);

        let err = parse_error("values[0] IN RANGE 5 1");
        assert_eq!(err.column, 20);
        assert!(err.message.contains("empty range"), "{err}");

        let err = parse_error("values[0] IN 1 2");
        assert!(err.message.contains("RANGE"), "{err}");

        assert_eq!(parse_error("   ").column, 1);
        assert_eq!(parse_error("key LOOKUP").column, 11);
        assert_eq!(parse_error("text NULL AND").column, 14);
        assert!(
            parse_error("text EQ 1.2.3")
                .message
                .contains("not a valid number")
        );
        assert_eq!(
            err_display("text EQ"),
            "at column 8: expected an operand (values[i], text, ts, key, a number or a string), found the end of the rule"
        );
    }

    fn err_display(rule: &str) -> String {
        parse_error(rule).to_string()
    }

    #[test]
    fn refuses_deep_nesting_instead_of_overflowing() {
        let deep = format!("{}text NULL{}", "(".repeat(500), ")".repeat(500));
        assert!(parse_error(&deep).message.contains("nested deeper"));
        let nots = format!("{}text NULL", "NOT ".repeat(500));
        assert!(parse_error(&nots).message.contains("nested deeper"));
    }

    #[test]
    fn refuses_long_chains_instead_of_overflowing() {
        // 10,000 predicates overflowed a 2 MiB stack when evaluated or dropped.
        let longest = vec!["ts NULL"; MAX_PREDICATES].join(" AND ");
        let rule = parse(&longest).unwrap();
        assert!(!rule.evaluate(&record(), &FakeLookups::default()));
        for joiner in [" AND ", " OR "] {
            let long = vec!["ts NULL"; 10_000].join(joiner);
            let err = parse_error(&long);
            assert!(err.message.contains("more than 1000 predicates"), "{err}");
            assert_eq!(err.column, MAX_PREDICATES * (7 + joiner.len()) + 1);
        }
    }

    #[test]
    fn evaluates_every_operator() {
        assert!(eval("values[0] EQ 12.5"));
        assert!(!eval("values[0] EQ 12"));
        assert!(eval("values[0] NEQ 12"));
        assert!(eval("values[0] IN RANGE 0 100"));
        assert!(eval("values[0] IN RANGE 12.5 12.5"), "inclusive bounds");
        assert!(!eval("values[1] IN RANGE 0 100"));
        assert!(eval("values[1] NOT IN RANGE 0 100"));
        assert!(eval("text EQ 'ok'"));
        assert!(eval("text NOT NULL"));
        assert!(eval("key EQ \"sensor-1\""));
        assert!(eval("ts IN RANGE 1700000000000 1800000000000"));
        assert!(eval("key LOOKUP ferry:allowed"));
        assert!(
            eval("values[3] LOOKUP ferry:allowed"),
            "7.0 looks up as `7`"
        );
        assert!(!eval("text LOOKUP ferry:allowed"));
        assert!(!eval("key LOOKUP ferry:missing"));
        assert!(eval("text NOT LOOKUP ferry:allowed"));
        assert!(eval("NOT text NULL"));
        assert!(eval("NOT (text NULL OR key NULL)"));
        assert!(eval(
            "(values[0] EQ 1 OR values[0] EQ 12.5) AND text EQ 'ok'"
        ));
        assert!(!eval("values[0] EQ 12.5 AND text EQ 'nope'"));
    }

    #[test]
    fn null_semantics() {
        // Out of range and NaN are NULL.
        assert!(eval("values[99] NULL"));
        assert!(eval("values[2] NULL"));
        assert!(eval("values[2] IS NULL"));
        assert!(!eval("values[0] NULL"));
        // Comparisons with NULL are neither true nor false, so both forms fail.
        assert!(!eval("values[99] EQ 1"));
        assert!(!eval("values[99] NEQ 1"));
        assert!(!eval("values[2] IN RANGE -1e300 1e300"));
        assert!(!eval("values[99] LOOKUP ferry:allowed"));
        // Their NOT forms are the plain negation.
        assert!(eval("NOT values[99] EQ 1"));
        assert!(eval("values[99] NOT IN RANGE 0 1"));
        // Empty text is NULL.
        let empty = PlainRecord {
            text: Some(String::new()),
            ..record()
        };
        let rule = parse("text NULL").unwrap();
        assert!(rule.evaluate(&empty, &FakeLookups::default()));
        let none = PlainRecord {
            text: None,
            ..record()
        };
        assert!(rule.evaluate(&none, &FakeLookups::default()));
    }

    #[test]
    fn mixed_types_compare_numerically_when_the_string_is_a_number() {
        let numeric_key = PlainRecord {
            key: "42".to_owned(),
            ..record()
        };
        let lookups = FakeLookups::default();
        assert!(parse("key EQ 42").unwrap().evaluate(&numeric_key, &lookups));
        assert!(
            parse("key IN RANGE 40 50")
                .unwrap()
                .evaluate(&numeric_key, &lookups)
        );
        assert!(eval("key NEQ 42"));
        assert!(!eval("key IN RANGE 0 100"));
    }

    #[test]
    fn lists_the_lookups_a_record_needs() {
        let rule =
            parse("key LOOKUP a:set OR (values[3] NOT LOOKUP 'b:hash' AND values[9] LOOKUP c)")
                .unwrap();
        let mut seen = Vec::new();
        rule.for_each_lookup(&record(), &mut |key, member| {
            seen.push((key.to_owned(), member))
        });
        assert_eq!(
            seen,
            vec![
                ("a:set".to_owned(), "sensor-1".to_owned()),
                ("b:hash".to_owned(), "7".to_owned())
            ]
        );
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let pieces = [
            "values", "[", "]", "0", "-", "(", ")", "AND", "OR", "NOT", "EQ", "NEQ", "IN", "RANGE",
            "NULL", "IS", "LOOKUP", "'", "\"", "text", "ts", "key", "1e999", "é", "\\",
        ];
        // A small deterministic generator: every sequence of up to 4 pieces.
        let mut count = 0;
        let n = pieces.len();
        for len in 1..=4u32 {
            for mut index in 0..n.pow(len) {
                let mut rule = String::new();
                for _ in 0..len {
                    rule.push_str(pieces[index % n]);
                    rule.push(' ');
                    index /= n;
                }
                if let Ok(expr) = parse(&rule) {
                    let _ = expr.evaluate(&record(), &FakeLookups::default());
                }
                count += 1;
            }
        }
        assert!(count > 300_000);
    }

    struct Enriched(PlainRecord, Vec<(&'static str, &'static str)>);

    impl RecordView for Enriched {
        fn key(&self) -> &str {
            self.0.key()
        }
        fn timestamp_ms(&self) -> i64 {
            self.0.timestamp_ms()
        }
        fn values(&self) -> &[f64] {
            self.0.values()
        }
        fn text(&self) -> Option<&str> {
            self.0.text()
        }
        fn reference(&self, field: &str) -> Option<&str> {
            self.1.iter().find(|(f, _)| *f == field).map(|(_, v)| *v)
        }
    }

    #[test]
    fn rules_name_the_fields_enrich_added() {
        let rule = parse("ref.desk EQ 'fx' AND ref.Limit NOT NULL AND ref.missing NULL").unwrap();
        let enriched = Enriched(record(), vec![("desk", "fx"), ("Limit", "5")]);
        assert!(rule.evaluate(&enriched, &FakeLookups::default()));
        let other_desk = Enriched(record(), vec![("desk", "rates"), ("Limit", "5")]);
        assert!(!rule.evaluate(&other_desk, &FakeLookups::default()));
        // A record no enrich stage touched has no reference fields.
        assert!(!rule.evaluate(&record(), &FakeLookups::default()));
        let range = parse("values[0] IN RANGE 0 ref.Limit").unwrap();
        assert!(!range.evaluate(&enriched, &FakeLookups::default()));
        let range = parse("values[1] IN RANGE -10 ref.Limit").unwrap();
        assert!(range.evaluate(&enriched, &FakeLookups::default()));
        assert!(
            parse("ref. NULL")
                .unwrap_err()
                .message
                .contains("unknown operand")
        );
    }
}
