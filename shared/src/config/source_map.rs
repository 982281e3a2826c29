//! Where each node of a YAML file sits, so that errors found after parsing
//! (a builder naming a missing factory, a duplicate name, a wrong type deep in
//! a step) can still say `master.yaml:12:5`.
//!
//! serde_yaml keeps no positions once a document is a value, so the file is
//! scanned a second time with yaml-rust2's event parser, which reports a
//! marker for every key and value. Paths are written the way error messages
//! show them: `builders[2].factory`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

/// A path into a YAML document, displayed as `builders[2].factory`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YamlPath(pub Vec<PathSegment>);

impl YamlPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Key(key.into()));
        Self(segments)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Index(index));
        Self(segments)
    }

    /// Appends what serde_path_to_error recorded while deserializing a node
    /// found at `self`.
    pub fn join_serde(&self, path: &serde_path_to_error::Path) -> Self {
        let mut joined = self.clone();
        for segment in path {
            match segment {
                serde_path_to_error::Segment::Seq { index } => joined.0.push(PathSegment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => joined.0.push(PathSegment::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
            }
        }
        joined
    }

    fn parent(&self) -> Option<Self> {
        let mut segments = self.0.clone();
        segments.pop()?;
        Some(Self(segments))
    }
}

impl std::fmt::Display for YamlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Positions of every key and value of one YAML document.
#[derive(Debug, Default)]
pub struct SourceMap {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
}

impl SourceMap {
    /// Scans `text`. A document that does not scan yields an empty map: the
    /// YAML parser proper reports that error with its own position.
    pub fn scan(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Self::default();
        }
        builder.map
    }

    /// Where `path` is best pointed at: the key that introduces it when it
    /// has one (`comand:` for an unknown field), else the value, else the
    /// nearest ancestor that has a position.
    pub fn position(&self, path: &YamlPath) -> Option<Position> {
        let mut current = Some(path.clone());
        while let Some(path) = current {
            let text = path.to_string();
            if let Some(position) = self.keys.get(&text).or_else(|| self.values.get(&text)) {
                return Some(*position);
            }
            current = path.parent();
        }
        None
    }

    /// Where the value at `path` starts, ignoring its key.
    pub fn value_position(&self, path: &YamlPath) -> Option<Position> {
        self.values.get(&path.to_string()).copied().or_else(|| self.position(path))
    }
}

enum Frame {
    Mapping { path: YamlPath, pending_key: Option<String>, expecting_key: bool },
    Sequence { path: YamlPath, next_index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: SourceMap,
}

fn position_of(mark: Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position { line: mark.line(), column: mark.col() + 1 }
}

impl Builder {
    /// Path of the node that starts now, or `None` when the node is a key.
    fn node_path(&mut self, event: &Event, mark: Marker) -> Option<YamlPath> {
        match self.stack.last_mut() {
            None => Some(YamlPath::root()),
            Some(Frame::Sequence { path, next_index }) => {
                let node = path.index(*next_index);
                *next_index += 1;
                Some(node)
            }
            Some(Frame::Mapping { path, pending_key, expecting_key }) => {
                if *expecting_key {
                    *expecting_key = false;
                    let key = match event {
                        Event::Scalar(value, ..) => value.clone(),
                        _ => String::from("?"),
                    };
                    self.map.keys.insert(path.key(key.clone()).to_string(), position_of(mark));
                    *pending_key = Some(key);
                    None
                } else {
                    *expecting_key = true;
                    let key = pending_key.take().unwrap_or_default();
                    Some(path.key(key))
                }
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(path) = self.node_path(&event, mark) {
                    self.map.values.insert(path.to_string(), position_of(mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a mapping key has no useful path; give it
                // a placeholder so its children still nest correctly.
                let path = self.node_path(&event, mark).unwrap_or_else(|| YamlPath::root().key("?"));
                self.map.values.insert(path.to_string(), position_of(mark));
                self.stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Mapping { path, pending_key: None, expecting_key: true }
                } else {
                    Frame::Sequence { path, next_index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_found_by_path() {
        let text = "builders:\n  - name: a\n    factory: f\n  - name: b\n    comand: x\n";
        let map = SourceMap::scan(text);
        let factory = YamlPath::root().key("builders").index(0).key("factory");
        assert_eq!(map.position(&factory), Some(Position { line: 3, column: 5 }));
        let typo = YamlPath::root().key("builders").index(1).key("comand");
        assert_eq!(map.position(&typo), Some(Position { line: 5, column: 5 }));
        let second = YamlPath::root().key("builders").index(1);
        assert_eq!(map.value_position(&second).map(|p| p.line), Some(4));
    }

    #[test]
    fn a_missing_path_falls_back_to_its_nearest_ancestor() {
        let map = SourceMap::scan("factories:\n  Unix:\n    steps: []\n");
        let missing = YamlPath::root().key("factories").key("Unix").key("steps").index(3);
        assert_eq!(map.position(&missing), Some(Position { line: 3, column: 5 }));
    }
}
