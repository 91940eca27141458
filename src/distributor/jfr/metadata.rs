//! A chunk's metadata event: the type descriptions every other byte of the chunk is read by.
//!
//! The event holds a string table and an element tree (`root` → `metadata` → `class` →
//! `field`, with annotations and settings under them, and a `region`). Only classes and their
//! fields are kept. The tree is walked at most [`MAX_ELEMENT_DEPTH`] deep, and every count in
//! it is bounded by the bytes left, so a hostile tree costs at most its own size.
//!
//! Invariants of [`Types`] once built: every field's type is a described class, no class
//! holds itself inline (directly or not), no class nests inline deeper than
//! [`MAX_INLINE_DEPTH`] nor reads more than [`MAX_INLINE_VALUES`] values per instance. So
//! reading a value is bounded recursion, and its work is bounded per byte read.
use super::reader::{JfrStr, Reader};
use super::JfrError;
use rustc_hash::FxHashMap;

/// How deep the metadata element tree may nest (real ones nest 5 deep).
pub const MAX_ELEMENT_DEPTH: usize = 16;
/// How deep classes may nest inline (a stack trace's frames: 2).
pub const MAX_INLINE_DEPTH: usize = 16;
/// How many values (fields, counting nested inline fields) one instance may read without
/// an array: what reading a value that consumes no byte at all may cost.
pub const MAX_INLINE_VALUES: usize = 1024;

/// How a value of a type is encoded when it is not a constant pool reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `boolean`, `byte`: one byte.
    Byte,
    /// `char`, `short`, `int`, `long`: a compressed int.
    Varint,
    /// `float`: four bytes.
    Float,
    /// `double`: eight bytes.
    Double,
    /// `java.lang.String`: an encoded string.
    Str,
    /// Any other class: its fields in order (index into [`Types::classes`]).
    Struct(u32),
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    /// The class id of the field's type.
    pub type_id: u64,
    /// The value is an id into that type's constant pool.
    pub constant_pool: bool,
    /// The value is a count and that many values.
    pub array: bool,
    /// How one value reads when inline (set by [`Types::build`]).
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub struct Class {
    pub id: u64,
    pub name: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, Default)]
pub struct Types {
    pub classes: Vec<Class>,
    by_id: FxHashMap<u64, u32>,
}

impl Types {
    pub fn by_id(&self, id: u64) -> Option<&Class> {
        self.by_id.get(&id).map(|&i| &self.classes[i as usize])
    }

    pub fn index_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub fn by_name(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Reads the metadata event `r` is positioned at (its size field first).
    pub fn read(r: &mut Reader<'_>) -> Result<Types, JfrError> {
        let r = &mut r.event("metadata event")?;
        let event_type = r.varint("metadata event type")?;
        if event_type != 0 {
            return Err(JfrError::new(format!("the metadata offset points at an event of type {event_type}, not 0")));
        }
        for what in ["metadata start time", "metadata duration", "metadata id"] {
            r.varint(what)?;
        }
        let n = r.count("metadata string table")?;
        let mut strings = Vec::with_capacity(n);
        for _ in 0..n {
            strings.push(match r.string("metadata string")? {
                JfrStr::Text(s) => s.into_owned(),
                JfrStr::Empty => String::new(),
                JfrStr::Pool(_) => return Err(JfrError::new("a metadata string refers to a constant pool")),
            });
        }
        let mut classes = Vec::new();
        walk(r, &strings, 0, Place::Top, &mut classes)?;
        Types::build(classes)
    }

    /// Indexes `classes`, resolves every field's kind and checks the invariants above.
    pub fn build(mut classes: Vec<Class>) -> Result<Types, JfrError> {
        let mut by_id = FxHashMap::default();
        for (i, c) in classes.iter().enumerate() {
            by_id.insert(c.id, i as u32);
        }
        let kinds: Vec<Kind> = (0..classes.len() as u32).map(|i| primitive(&classes[i as usize].name, i)).collect();
        for c in &mut classes {
            for f in &mut c.fields {
                let &t = by_id.get(&f.type_id).ok_or_else(|| {
                    JfrError::new(format!("field {}.{} has type id {}, which no class has", c.name, f.name, f.type_id))
                })?;
                f.kind = kinds[t as usize];
            }
        }
        let types = Types { classes, by_id };
        let mut shapes = vec![Shape::Unknown; types.classes.len()];
        for i in 0..types.classes.len() {
            types.shape(i, &mut shapes, 0)?;
        }
        Ok(types)
    }

    /// How deep class `i` nests and how many values it reads inline, once per class.
    fn shape(&self, i: usize, shapes: &mut [Shape], depth: usize) -> Result<(usize, usize), JfrError> {
        match shapes[i] {
            Shape::Known { depth, values } => return Ok((depth, values)),
            Shape::Visiting => {
                return Err(JfrError::new(format!("class {} holds itself inline", self.classes[i].name)));
            }
            Shape::Unknown => {}
        }
        if depth > MAX_INLINE_DEPTH {
            return Err(JfrError::new(format!("classes nest inline deeper than {MAX_INLINE_DEPTH}")));
        }
        shapes[i] = Shape::Visiting;
        let (mut deepest, mut values) = (0usize, 0usize);
        for f in &self.classes[i].fields {
            values += 1;
            if let (Kind::Struct(t), false) = (f.kind, f.constant_pool) {
                let (d, v) = self.shape(t as usize, shapes, depth + 1)?;
                deepest = deepest.max(d + 1);
                if !f.array {
                    values += v;
                }
            }
        }
        if deepest > MAX_INLINE_DEPTH || values > MAX_INLINE_VALUES {
            return Err(JfrError::new(format!(
                "class {} nests {deepest} deep and reads {values} values inline; kiln reads at most {MAX_INLINE_DEPTH} and {MAX_INLINE_VALUES}",
                self.classes[i].name
            )));
        }
        shapes[i] = Shape::Known { depth: deepest, values };
        Ok((deepest, values))
    }

    /// Skips one value of field `f`: its array count and values, its pool id, or its value.
    pub fn skip_field(&self, r: &mut Reader<'_>, f: &Field) -> Result<(), JfrError> {
        let n = if f.array { r.count("array length")? } else { 1 };
        for _ in 0..n {
            if f.constant_pool {
                r.varint("constant pool reference")?;
            } else {
                self.skip_value(r, f.kind)?;
            }
        }
        Ok(())
    }

    /// Skips one inline value of `kind`. Recursion is bounded by the inline depth checked at
    /// build time.
    pub fn skip_value(&self, r: &mut Reader<'_>, kind: Kind) -> Result<(), JfrError> {
        match kind {
            Kind::Byte => r.skip(1, "byte value"),
            Kind::Varint => r.varint("int value").map(|_| ()),
            Kind::Float => r.skip(4, "float value"),
            Kind::Double => r.skip(8, "double value"),
            Kind::Str => r.string("string value").map(|_| ()),
            Kind::Struct(c) => {
                for f in &self.classes[c as usize].fields {
                    self.skip_field(r, f)?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Unknown,
    Visiting,
    Known { depth: usize, values: usize },
}

/// The kind of a class by its name: JFR's primitives, or a struct.
fn primitive(name: &str, index: u32) -> Kind {
    match name {
        "boolean" | "byte" => Kind::Byte,
        "char" | "short" | "int" | "long" => Kind::Varint,
        "float" => Kind::Float,
        "double" => Kind::Double,
        "java.lang.String" => Kind::Str,
        _ => Kind::Struct(index),
    }
}

/// Where in the tree an element sits: what its children may be.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Top,
    Root,
    Metadata,
    Class,
    Other,
}

/// Reads one element and its children, collecting `class` elements under `metadata`.
fn walk(
    r: &mut Reader<'_>,
    strings: &[String],
    depth: usize,
    place: Place,
    classes: &mut Vec<Class>,
) -> Result<Option<Field>, JfrError> {
    if depth > MAX_ELEMENT_DEPTH {
        return Err(JfrError::new(format!("metadata elements nest deeper than {MAX_ELEMENT_DEPTH}")));
    }
    let string = |i: u64| {
        strings
            .get(i as usize)
            .map(String::as_str)
            .ok_or_else(|| JfrError::new(format!("metadata string index {i} out of range ({} strings)", strings.len())))
    };
    let name = string(r.varint("element name")?)?;
    let n = r.count("element attributes")?;
    let mut attrs: Vec<(&str, &str)> = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        let (k, v) = (string(r.varint("attribute name")?)?, string(r.varint("attribute value")?)?);
        attrs.push((k, v));
    }
    let attr = |k: &str| attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let child_place = match (place, name) {
        (Place::Top, "root") => Place::Root,
        (Place::Top, other) => return Err(JfrError::new(format!("metadata starts with {other:?}, not root"))),
        (Place::Root, "metadata") => Place::Metadata,
        (Place::Metadata, "class") => Place::Class,
        _ => Place::Other,
    };
    let mut class = (child_place == Place::Class)
        .then(|| -> Result<Class, JfrError> {
            let id = attr("id").and_then(|v| v.parse().ok()).ok_or_else(|| JfrError::new("a class without an id"))?;
            let name = attr("name").filter(|n| !n.is_empty()).ok_or_else(|| JfrError::new("a class without a name"))?;
            Ok(Class { id, name: name.to_string(), fields: Vec::new() })
        })
        .transpose()?;
    let children = r.count("element children")?;
    for _ in 0..children {
        if let Some(f) = walk(r, strings, depth + 1, child_place, classes)? {
            if let Some(c) = class.as_mut() {
                c.fields.push(f);
            }
        }
    }
    if let Some(c) = class {
        classes.push(c);
    }
    if place == Place::Class && name == "field" {
        let field_name =
            attr("name").filter(|n| !n.is_empty()).ok_or_else(|| JfrError::new("a field without a name"))?;
        let type_id = attr("class")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| JfrError::new(format!("field {field_name} without a class id")))?;
        let array = match attr("dimension") {
            None | Some("0") => false,
            Some("1") => true,
            Some(d) => return Err(JfrError::new(format!("field {field_name} has dimension {d}; JFR knows 0 and 1"))),
        };
        return Ok(Some(Field {
            name: field_name.to_string(),
            type_id,
            constant_pool: attr("constantPool") == Some("true"),
            array,
            kind: Kind::Varint,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(id: u64, name: &str, fields: &[(&str, u64, bool, bool)]) -> Class {
        Class {
            id,
            name: name.into(),
            fields: fields
                .iter()
                .map(|&(n, t, cp, array)| Field {
                    name: n.into(),
                    type_id: t,
                    constant_pool: cp,
                    array,
                    kind: Kind::Varint,
                })
                .collect(),
        }
    }

    #[test]
    fn inline_cycles_and_unknown_types_are_refused() {
        let e = Types::build(vec![
            class(1, "long", &[]),
            class(2, "A", &[("a", 3, false, false)]),
            class(3, "B", &[("b", 2, false, true)]),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("holds itself inline"), "{e}");
        let e = Types::build(vec![class(2, "A", &[("a", 9, false, false)])]).unwrap_err();
        assert!(e.to_string().contains("no class has"), "{e}");
        // Through the constant pool a class may refer to itself.
        assert!(Types::build(vec![class(2, "A", &[("a", 2, true, false)])]).is_ok());
    }

    #[test]
    fn wide_inline_trees_are_refused() {
        // Each level doubles what one value reads: 2^11 values of an empty class.
        let mut classes = vec![class(100, "Empty", &[])];
        let mut below = 100;
        for level in 0..11u64 {
            classes.push(class(level, &format!("L{level}"), &[("a", below, false, false), ("b", below, false, false)]));
            below = level;
        }
        let e = Types::build(classes).unwrap_err();
        assert!(e.to_string().contains("values inline"), "{e}");
    }
}
