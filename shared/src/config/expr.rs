//! The small expression language of factories' computed values: a `kw`
//! value or a step field written `= EXPR` (e.g. `= test_timeout *
//! timeout_factor + 600`), worked out for each builder when the
//! configuration is loaded, from the factory's `kw` and the builder's and
//! its worker's properties.
//!
//! It is a subset of Python's expressions, since the people who keep a
//! CPython fleet's configuration read Python: integers, strings, `true` /
//! `false` / `None`, lists, names, `+ - * //`, comparisons, `in`, `not`,
//! `and`, `or`, `A if COND else B`, and three functions: `str(x)`,
//! `len(x)`, `join(list, separator)`. Nothing in it can reach outside the
//! configuration: it has no attributes, no loops and no other calls.

use serde_yaml::Value;

/// Evaluates `text`, asking `lookup` for each name it reads.
pub fn eval(text: &str, lookup: &mut dyn FnMut(&str) -> Result<Value, String>) -> Result<Value, String> {
    let tokens = tokens(text)?;
    let mut parser = Parser { tokens: &tokens, at: 0 };
    let tree = parser.expression()?;
    if let Some(token) = tokens.get(parser.at) {
        return Err(format!("unexpected `{}` in `{text}`", token.text()));
    }
    tree.eval(lookup)
}

/// Python's truth: `None`, `false`, `0`, `""` and `[]` are false.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64() != Some(0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(items) => !items.is_empty(),
        Value::Mapping(map) => !map.is_empty(),
        Value::Tagged(tagged) => truthy(&tagged.value),
    }
}

/// A value as text: what `str(x)` gives and what `%(kw:NAME)s` puts in.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Sequence(items) => items.iter().map(text).collect::<Vec<_>>().join(" "),
        Value::Mapping(_) | Value::Tagged(_) => serde_yaml::to_string(value).unwrap_or_default().trim().to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Str(String),
    Name(String),
    Op(&'static str),
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Int(n) => n.to_string(),
            Token::Str(s) => format!("'{s}'"),
            Token::Name(name) => name.clone(),
            Token::Op(op) => (*op).to_owned(),
        }
    }
}

const OPERATORS: [&str; 16] = ["//", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "(", ")", "[", "]", ",", "%"];

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let digits: String = chars[start..i].iter().collect();
            out.push(Token::Int(digits.parse().map_err(|_| format!("`{digits}` is too large a number"))?));
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| format!("a string in `{text}` has no closing {c}"))?;
            out.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Name(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..].iter().take(2).collect();
            let op = OPERATORS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| format!("`{c}` cannot be read in `{text}`"))?;
            out.push(Token::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

#[derive(Debug)]
enum Tree {
    Literal(Value),
    Name(String),
    List(Vec<Tree>),
    Not(Box<Tree>),
    Negate(Box<Tree>),
    Binary(&'static str, Box<Tree>, Box<Tree>),
    And(Box<Tree>, Box<Tree>),
    Or(Box<Tree>, Box<Tree>),
    If { then: Box<Tree>, condition: Box<Tree>, otherwise: Box<Tree> },
    Call(String, Vec<Tree>),
}

struct Parser<'a> {
    tokens: &'a [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Op(o)) if *o == op);
        self.at += found as usize;
        found
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Name(name)) if name == word);
        self.at += found as usize;
        found
    }

    fn expect_op(&mut self, op: &str) -> Result<(), String> {
        match self.eat_op(op) {
            true => Ok(()),
            false => Err(match self.peek() {
                Some(token) => format!("expected `{op}`, found `{}`", token.text()),
                None => format!("expected `{op}` at the end"),
            }),
        }
    }

    fn expression(&mut self) -> Result<Tree, String> {
        let then = self.or()?;
        if !self.eat_word("if") {
            return Ok(then);
        }
        let condition = self.or()?;
        if !self.eat_word("else") {
            return Err("`A if CONDITION` needs `else B`".into());
        }
        let otherwise = self.expression()?;
        Ok(Tree::If { then: Box::new(then), condition: Box::new(condition), otherwise: Box::new(otherwise) })
    }

    fn or(&mut self) -> Result<Tree, String> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Tree::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Tree, String> {
        let mut left = self.not()?;
        while self.eat_word("and") {
            left = Tree::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Tree, String> {
        if self.eat_word("not") {
            return Ok(Tree::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Tree, String> {
        let left = self.sum()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat_op(op) {
                return Ok(Tree::Binary(op, Box::new(left), Box::new(self.sum()?)));
            }
        }
        if self.eat_word("in") {
            return Ok(Tree::Binary("in", Box::new(left), Box::new(self.sum()?)));
        }
        if matches!(self.tokens.get(self.at..self.at + 2), Some([Token::Name(a), Token::Name(b)]) if a == "not" && b == "in")
        {
            self.at += 2;
            let contains = Tree::Binary("in", Box::new(left), Box::new(self.sum()?));
            return Ok(Tree::Not(Box::new(contains)));
        }
        Ok(left)
    }

    fn sum(&mut self) -> Result<Tree, String> {
        let mut left = self.product()?;
        loop {
            let op = if self.eat_op("+") {
                "+"
            } else if self.eat_op("-") {
                "-"
            } else {
                return Ok(left);
            };
            left = Tree::Binary(op, Box::new(left), Box::new(self.product()?));
        }
    }

    fn product(&mut self) -> Result<Tree, String> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_op("*") {
                "*"
            } else if self.eat_op("//") {
                "//"
            } else if self.eat_op("%") {
                "%"
            } else {
                return Ok(left);
            };
            left = Tree::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Tree, String> {
        if self.eat_op("-") {
            return Ok(Tree::Negate(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Tree, String> {
        let Some(token) = self.peek().cloned() else {
            return Err("the expression ends too soon".into());
        };
        self.at += 1;
        match token {
            Token::Int(n) => Ok(Tree::Literal(Value::from(n))),
            Token::Str(s) => Ok(Tree::Literal(Value::String(s))),
            Token::Op("(") => {
                let inner = self.expression()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            Token::Op("[") => {
                let mut items = Vec::new();
                if !self.eat_op("]") {
                    loop {
                        items.push(self.expression()?);
                        if self.eat_op("]") {
                            break;
                        }
                        self.expect_op(",")?;
                    }
                }
                Ok(Tree::List(items))
            }
            Token::Name(name) => match name.as_str() {
                "true" | "True" => Ok(Tree::Literal(Value::Bool(true))),
                "false" | "False" => Ok(Tree::Literal(Value::Bool(false))),
                "None" | "null" => Ok(Tree::Literal(Value::Null)),
                "if" | "else" | "and" | "or" | "not" | "in" => Err(format!("`{name}` cannot start a value")),
                _ if self.eat_op("(") => {
                    let mut arguments = Vec::new();
                    if !self.eat_op(")") {
                        loop {
                            arguments.push(self.expression()?);
                            if self.eat_op(")") {
                                break;
                            }
                            self.expect_op(",")?;
                        }
                    }
                    Ok(Tree::Call(name, arguments))
                }
                _ => Ok(Tree::Name(name)),
            },
            Token::Op(op) => Err(format!("`{op}` cannot start a value")),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "None",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn int(value: &Value, op: &str) -> Result<i64, String> {
    value.as_i64().ok_or_else(|| format!("`{op}` needs whole numbers, not {} ({})", kind(value), text(value)))
}

impl Tree {
    fn eval(&self, lookup: &mut dyn FnMut(&str) -> Result<Value, String>) -> Result<Value, String> {
        Ok(match self {
            Tree::Literal(value) => value.clone(),
            Tree::Name(name) => lookup(name)?,
            Tree::List(items) => Value::Sequence(items.iter().map(|item| item.eval(lookup)).collect::<Result<_, _>>()?),
            Tree::Not(inner) => Value::Bool(!truthy(&inner.eval(lookup)?)),
            Tree::Negate(inner) => Value::from(-int(&inner.eval(lookup)?, "-")?),
            Tree::And(left, right) => {
                let left = left.eval(lookup)?;
                if truthy(&left) { right.eval(lookup)? } else { left }
            }
            Tree::Or(left, right) => {
                let left = left.eval(lookup)?;
                if truthy(&left) { left } else { right.eval(lookup)? }
            }
            Tree::If { then, condition, otherwise } => match truthy(&condition.eval(lookup)?) {
                true => then.eval(lookup)?,
                false => otherwise.eval(lookup)?,
            },
            Tree::Binary(op, left, right) => binary(op, left.eval(lookup)?, right.eval(lookup)?)?,
            Tree::Call(name, arguments) => {
                let values: Vec<Value> = arguments.iter().map(|a| a.eval(lookup)).collect::<Result<_, _>>()?;
                call(name, values)?
            }
        })
    }
}

fn binary(op: &str, left: Value, right: Value) -> Result<Value, String> {
    Ok(match (op, &left, &right) {
        ("+", Value::String(a), Value::String(b)) => Value::String(format!("{a}{b}")),
        ("+", Value::Sequence(a), Value::Sequence(b)) => Value::Sequence(a.iter().chain(b).cloned().collect()),
        ("+", Value::String(_), _) | ("+", _, Value::String(_)) => {
            return Err(format!(
                "cannot add {} to {}; write str(x) to make text of a number",
                kind(&right),
                kind(&left)
            ));
        }
        ("in", _, Value::Sequence(items)) => Value::Bool(items.contains(&left)),
        ("in", Value::String(part), Value::String(whole)) => Value::Bool(whole.contains(part.as_str())),
        ("in", _, _) => return Err(format!("`in` needs a list or a string on its right, not {}", kind(&right))),
        ("==", _, _) => Value::Bool(left == right),
        ("!=", _, _) => Value::Bool(left != right),
        ("<" | "<=" | ">" | ">=", Value::String(a), Value::String(b)) => Value::Bool(compare(op, a.cmp(b))),
        ("<" | "<=" | ">" | ">=", _, _) => Value::Bool(compare(op, int(&left, op)?.cmp(&int(&right, op)?))),
        _ => {
            let (a, b) = (int(&left, op)?, int(&right, op)?);
            let result = match op {
                "+" => a.checked_add(b),
                "-" => a.checked_sub(b),
                "*" => a.checked_mul(b),
                "//" | "%" if b == 0 => return Err(format!("`{op}` by zero")),
                "//" => Some(a.div_euclid(b)),
                "%" => Some(a.rem_euclid(b)),
                _ => None,
            };
            Value::from(result.ok_or_else(|| format!("`{a} {op} {b}` is out of range"))?)
        }
    })
}

fn compare(op: &str, ordering: std::cmp::Ordering) -> bool {
    match op {
        "<" => ordering.is_lt(),
        "<=" => ordering.is_le(),
        ">" => ordering.is_gt(),
        _ => ordering.is_ge(),
    }
}

fn call(name: &str, arguments: Vec<Value>) -> Result<Value, String> {
    match (name, arguments.as_slice()) {
        ("str", [value]) => Ok(Value::String(text(value))),
        ("len", [Value::Sequence(items)]) => Ok(Value::from(items.len() as i64)),
        ("len", [Value::String(s)]) => Ok(Value::from(s.chars().count() as i64)),
        ("join", [Value::Sequence(items), Value::String(separator)]) => {
            Ok(Value::String(items.iter().map(text).collect::<Vec<_>>().join(separator)))
        }
        ("str" | "len" | "join", _) => Err(format!(
            "`{name}` takes {}",
            match name {
                "str" => "one value",
                "len" => "one list or string",
                _ => "a list and a separator: join(list, ',')",
            }
        )),
        _ => Err(format!("`{name}` is not a function here; there are str, len and join")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Result<Value, String> {
        let mut lookup = |name: &str| -> Result<Value, String> {
            match name {
                "test_timeout" => Ok(Value::from(1200)),
                "timeout_factor" => Ok(Value::from(2)),
                "test_flags" => Ok(serde_yaml::from_str("[-R, '3:3']").unwrap()),
                "parallel_tests" => Ok(Value::Null),
                "excluded" => Ok(serde_yaml::from_str("[-urlfetch, -network]").unwrap()),
                _ => Err(format!("`{name}` is not defined")),
            }
        };
        eval(text, &mut lookup)
    }

    #[test]
    fn python_like_expressions_compute_timeouts_and_options() {
        assert_eq!(run("test_timeout * timeout_factor + 600").unwrap(), Value::from(3000));
        assert_eq!(run("'-R' in test_flags").unwrap(), Value::Bool(true));
        assert_eq!(run("'-M' not in test_flags").unwrap(), Value::Bool(true));
        assert_eq!(run("test_timeout * (2 if '-R' in test_flags else 1)").unwrap(), Value::from(2400));
        assert_eq!(run("'-j' + str(parallel_tests or 2)").unwrap(), Value::String("-j2".into()));
        let resources = run("['-u' + join(['all'] + excluded, ',')] if excluded else []").unwrap();
        assert_eq!(resources, serde_yaml::from_str::<Value>("['-uall,-urlfetch,-network']").unwrap());
        assert_eq!(run("test_flags + ['-j4']").unwrap(), serde_yaml::from_str::<Value>("[-R, '3:3', -j4]").unwrap());
        assert_eq!(run("not parallel_tests and len(test_flags) == 2").unwrap(), Value::Bool(true));
        assert_eq!(run("7 // 2 - -1").unwrap(), Value::from(4));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(run("nope + 1").unwrap_err(), "`nope` is not defined");
        assert_eq!(
            run("'a' + 1").unwrap_err(),
            "cannot add a number to a string; write str(x) to make text of a number"
        );
        assert_eq!(run("1 +").unwrap_err(), "the expression ends too soon");
        assert_eq!(run("open('x')").unwrap_err(), "`open` is not a function here; there are str, len and join");
        assert_eq!(run("1 if 2").unwrap_err(), "`A if CONDITION` needs `else B`");
        assert_eq!(run("(1").unwrap_err(), "expected `)` at the end");
        assert_eq!(run("1 2").unwrap_err(), "unexpected `2` in `1 2`");
        assert_eq!(run("1 // 0").unwrap_err(), "`//` by zero");
        assert!(run("'open").unwrap_err().contains("no closing"));
    }
}
