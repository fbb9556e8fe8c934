//! A YAML tree in which every node remembers where it came from, so that
//! configuration errors can name the file, line and column.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value as Json;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where a value came from: a position in the pipeline file or a `--set` override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A position in the file (1-based line and column).
    File { line: usize, col: usize },
    /// The `--set` override with this index.
    Override(usize),
}

impl Origin {
    fn at(marker: &Marker) -> Self {
        Origin::File {
            line: marker.line(),
            col: marker.col() + 1,
        }
    }
}

/// A YAML node with its origin.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's value.
    pub value: Value,
    /// Where the value starts.
    pub origin: Origin,
}

/// A mapping entry: the key's text and origin, and the value.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The key as written.
    pub key: String,
    /// Where the key is.
    pub key_origin: Origin,
    /// The value node.
    pub node: Node,
}

/// The value of a node, with scalars resolved by the YAML 1.2 core schema.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX` that fits a `u64` (a seed, say).
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; keys are unique.
    Map(Vec<Entry>),
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub origin: Origin,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Node {
    /// Parses one YAML document. An empty document is `Null`.
    pub fn parse(text: &str) -> Result<Node, SyntaxError> {
        TreeBuilder::new(text).build()
    }

    /// Parses a `--set` value: any YAML flow value (`0.01`, `[1, 2]`, `{a: 1}`, `null`).
    pub fn parse_override(text: &str, index: usize) -> Result<Node, SyntaxError> {
        let mut node = Node::parse(text).map_err(|e| SyntaxError {
            message: e.message,
            origin: Origin::Override(index),
        })?;
        node.set_origin(Origin::Override(index));
        Ok(node)
    }

    fn set_origin(&mut self, origin: Origin) {
        self.origin = origin;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.set_origin(origin)),
            Value::Map(entries) => entries.iter_mut().for_each(|e| {
                e.key_origin = origin;
                e.node.set_origin(origin);
            }),
            _ => {}
        }
    }

    /// The entries of a mapping, or `None` for any other value.
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The entry with this key, when the node is a mapping.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries()?.iter().find(|e| e.key == key)
    }

    /// The name of the node's type as users see it in messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Sets the value at a dotted path, creating mappings on the way (for `--set`).
    /// Fails with the number of leading path segments that name a value which
    /// is not a mapping, and that value's type.
    pub fn set_path(&mut self, path: &[&str], value: Node) -> Result<(), (usize, &'static str)> {
        let mut node = self;
        for (depth, segment) in path.iter().enumerate() {
            if matches!(node.value, Value::Null) {
                node.value = Value::Map(Vec::new());
            }
            let type_name = node.type_name();
            let Value::Map(entries) = &mut node.value else {
                return Err((depth, type_name));
            };
            let index = match entries.iter().position(|e| e.key == *segment) {
                Some(i) => i,
                None => {
                    entries.push(Entry {
                        key: segment.to_string(),
                        key_origin: value.origin,
                        node: Node {
                            value: Value::Null,
                            origin: value.origin,
                        },
                    });
                    entries.len() - 1
                }
            };
            node = &mut entries[index].node;
        }
        *node = value;
        Ok(())
    }

    /// The node at a path of mapping keys and sequence indices, and the
    /// origin of the deepest node found on the way when the path does not exist.
    pub fn locate<'a>(&self, path: impl IntoIterator<Item = &'a str>) -> Origin {
        let mut node = self;
        for segment in path {
            let next = match &node.value {
                Value::Map(entries) => entries.iter().find(|e| e.key == segment).map(|e| &e.node),
                Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.origin
    }

    /// The origin of a key at a path (the key itself, not its value).
    pub fn locate_key<'a>(&self, parent: impl IntoIterator<Item = &'a str>, key: &str) -> Origin {
        let mut node = self;
        for segment in parent {
            match node.entry(segment) {
                Some(e) => node = &e.node,
                None => return node.origin,
            }
        }
        node.entry(key).map_or(node.origin, |e| e.key_origin)
    }

    /// Converts to JSON for typed deserialization. Non-finite floats are
    /// rejected by the caller beforehand ([`Node::find_non_finite`]).
    pub fn to_json(&self) -> Json {
        match &self.value {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Int(i) => Json::from(*i),
            Value::UInt(u) => Json::from(*u),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
            Value::Str(s) => Json::String(s.clone()),
            Value::Seq(items) => Json::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => Json::Object(entries.iter().map(|e| (e.key.clone(), e.node.to_json())).collect()),
        }
    }

    /// The first NaN or infinite number in the tree, which configs cannot hold.
    pub fn find_non_finite(&self) -> Option<Origin> {
        match &self.value {
            Value::Float(f) if !f.is_finite() => Some(self.origin),
            Value::Seq(items) => items.iter().find_map(Node::find_non_finite),
            Value::Map(entries) => entries.iter().find_map(|e| e.node.find_non_finite()),
            _ => None,
        }
    }
}

fn position(origin: Origin) -> (usize, usize) {
    match origin {
        Origin::File { line, col } => (line, col),
        Origin::Override(_) => (0, 0),
    }
}

/// Resolves a plain scalar by the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match (text.parse::<i64>(), text.parse::<u64>()) {
            (Ok(i), _) => Value::Int(i),
            (_, Ok(u)) => Value::UInt(u),
            // Too large for any numeric setting: the digits as written (a digits-only hash).
            _ => Value::Str(text.to_string()),
        };
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    let looks_numeric = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(f) = text.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(text.to_string())
}

/// The most nodes a file may expand to, aliases counted as copies of what
/// they name: a bound on the memory and time a file can cost ("billion
/// laughs"), far above any real pipeline or sweep (a few hundred nodes).
pub const MAX_NODES: usize = 100_000;

/// The deepest nesting of lists and mappings a file may have.
pub const MAX_DEPTH: usize = 64;

/// Builds a [`Node`] tree from the parser's event stream.
struct TreeBuilder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    /// Anchor id -> the node and its size in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes built so far, aliases expanded.
    nodes: usize,
    /// Lists and mappings open around the node being built.
    depth: usize,
}

impl<'a> TreeBuilder<'a> {
    fn new(text: &'a str) -> Self {
        TreeBuilder {
            parser: Parser::new_from_str(text),
            anchors: HashMap::new(),
            nodes: 0,
            depth: 0,
        }
    }

    /// Counts `size` more nodes against [`MAX_NODES`].
    fn spend(&mut self, size: usize, origin: Origin) -> Result<(), SyntaxError> {
        self.nodes = self.nodes.saturating_add(size);
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                message: format!(
                    "the file expands to more than {MAX_NODES} values (each alias counts as a copy of what it names): \
                     are aliases nested inside each other?"
                ),
                origin,
            });
        }
        Ok(())
    }

    /// Enters a list or mapping, within [`MAX_DEPTH`].
    fn enter(&mut self, origin: Origin) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SyntaxError {
                message: format!("lists and mappings are nested more than {MAX_DEPTH} deep"),
                origin,
            });
        }
        Ok(())
    }

    fn next(&mut self) -> Result<(Event, Marker), SyntaxError> {
        self.parser.next_token().map_err(|e| SyntaxError {
            message: format!("invalid YAML: {}", e.info()),
            origin: Origin::at(e.marker()),
        })
    }

    fn build(mut self) -> Result<Node, SyntaxError> {
        let mut root = None;
        loop {
            let (event, _marker) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => break,
                Event::DocumentStart => {
                    let (event, marker) = self.next()?;
                    if matches!(event, Event::DocumentEnd) {
                        continue;
                    }
                    if root.is_some() {
                        return Err(SyntaxError {
                            message: "expected one YAML document, found a second one".into(),
                            origin: Origin::at(&marker),
                        });
                    }
                    root = Some(self.node(event, marker)?);
                }
                other => unreachable!("YAML parser emitted {other:?} outside a document"),
            }
        }
        Ok(root.unwrap_or(Node {
            value: Value::Null,
            origin: Origin::File { line: 1, col: 1 },
        }))
    }

    fn node(&mut self, event: Event, marker: Marker) -> Result<Node, SyntaxError> {
        let origin = Origin::at(&marker);
        let start = self.nodes;
        let (node, anchor) = match event {
            Event::Alias(id) => {
                let size = self
                    .anchors
                    .get(&id)
                    .map(|(_, size)| *size)
                    .ok_or_else(|| SyntaxError {
                        message: "unknown alias".into(),
                        origin,
                    })?;
                // Counted before it is copied.
                self.spend(size, origin)?;
                return Ok(Node {
                    origin,
                    ..self.anchors[&id].0.clone()
                });
            }
            Event::Scalar(text, style, anchor, _tag) => {
                self.spend(1, origin)?;
                let value = if style == TScalarStyle::Plain {
                    resolve_plain(&text)
                } else {
                    Value::Str(text)
                };
                (Node { value, origin }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                self.spend(1, origin)?;
                self.enter(origin)?;
                let mut items = Vec::new();
                loop {
                    let (event, marker) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    items.push(self.node(event, marker)?);
                }
                self.depth -= 1;
                let value = Value::Seq(items);
                (Node { value, origin }, anchor)
            }
            Event::MappingStart(anchor, _) => {
                self.spend(1, origin)?;
                self.enter(origin)?;
                let mut entries: Vec<Entry> = Vec::new();
                loop {
                    let (event, key_marker) = self.next()?;
                    if event == Event::MappingEnd {
                        break;
                    }
                    let key_node = self.node(event, key_marker)?;
                    let key = match key_node.value {
                        Value::Str(s) => s,
                        Value::Int(i) => i.to_string(),
                        Value::UInt(u) => u.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => "null".to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(SyntaxError {
                                message: "a mapping key must be a plain name".into(),
                                origin: key_node.origin,
                            });
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        let first_line = match first.key_origin {
                            Origin::File { line, .. } => format!(" (first defined on line {line})"),
                            Origin::Override(_) => String::new(),
                        };
                        return Err(SyntaxError {
                            message: format!("duplicate key `{key}`{first_line}"),
                            origin: key_node.origin,
                        });
                    }
                    let (event, marker) = self.next()?;
                    let node = self.node(event, marker)?;
                    entries.push(Entry {
                        key,
                        key_origin: key_node.origin,
                        node,
                    });
                }
                self.depth -= 1;
                // A block mapping's start marker sits after its first key: start at that key instead.
                let origin = match entries.first().map(|e| e.key_origin) {
                    Some(first @ Origin::File { line, col }) if (line, col) < position(origin) => first,
                    _ => origin,
                };
                (
                    Node {
                        value: Value::Map(entries),
                        origin,
                    },
                    anchor,
                )
            }
            other => unreachable!("YAML parser emitted {other:?} where a node was expected"),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), self.nodes - start));
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_follow_the_core_schema() {
        assert!(matches!(resolve_plain("1.0e-3"), Value::Float(f) if f == 1.0e-3));
        assert!(matches!(resolve_plain("1e-3"), Value::Float(f) if f == 1.0e-3));
        assert!(matches!(resolve_plain("42"), Value::Int(42)));
        assert!(matches!(resolve_plain("-7"), Value::Int(-7)));
        assert!(matches!(resolve_plain("~"), Value::Null));
        assert!(matches!(resolve_plain("yes"), Value::Str(_)));
        assert!(matches!(resolve_plain("e5"), Value::Str(_)));
        assert!(matches!(resolve_plain("1.2.3"), Value::Str(_)));
    }

    #[test]
    fn integers_keep_their_digits_past_i64() {
        assert!(matches!(resolve_plain("18446744073709551615"), Value::UInt(u64::MAX)));
        // Past u64: no numeric setting can hold it, so it stays as written (a digits-only hash).
        let digits = "1".repeat(64);
        assert!(matches!(resolve_plain(&digits), Value::Str(s) if s == digits));
    }

    #[test]
    fn aliases_count_as_copies_against_the_budget() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..6 {
            let alias = format!("*{}", (b'a' + level - 1) as char);
            let items = vec![alias; 10].join(", ");
            bomb.push_str(&format!(
                "{}: &{} [{items}]\n",
                (b'a' + level) as char,
                (b'a' + level) as char
            ));
        }
        let err = Node::parse(&bomb).unwrap_err();
        assert!(err.message.contains("more than 100000 values"), "{}", err.message);
        assert!(matches!(err.origin, Origin::File { line: 5, .. }), "{:?}", err.origin);
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(
            Node::parse(&deep)
                .unwrap_err()
                .message
                .contains("nested more than 64 deep")
        );
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(Node::parse(&ok).is_ok());
    }

    #[test]
    fn positions_are_one_based() {
        let node = Node::parse("a:\n  b: 1\n  c: [x, y]\n").unwrap();
        assert_eq!(node.locate(["a", "b"]), Origin::File { line: 2, col: 6 });
        assert_eq!(node.locate_key(["a"], "c"), Origin::File { line: 3, col: 3 });
        assert_eq!(node.locate(["a", "c", "1"]), Origin::File { line: 3, col: 10 });
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = Node::parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.message, "duplicate key `a` (first defined on line 1)");
        assert_eq!(err.origin, Origin::File { line: 3, col: 1 });
    }

    #[test]
    fn set_path_creates_mappings() {
        let mut node = Node::parse("a: {b: 1}").unwrap();
        let value = Node::parse_override("2", 0).unwrap();
        node.set_path(&["a", "c", "d"], value).unwrap();
        assert_eq!(node.to_json(), serde_json::json!({"a": {"b": 1, "c": {"d": 2}}}));
        let value = Node::parse_override("2", 1).unwrap();
        let err = node.set_path(&["a", "b", "x"], value).unwrap_err();
        assert_eq!(err, (2, "an integer"));
    }
}
