//! How to read the fields kiln wants out of one class's records: a plan made once per chunk
//! from the metadata, run per record. A field is bound only if its shape is the expected one
//! (as jfr-parser binds by name, type and encoding): another shape is skipped and its value
//! reads as missing (0, no string).
use super::metadata::{Kind, Types};
use super::reader::{JfrStr, Reader};
use super::JfrError;

/// What a wanted field must look like to be bound.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// An inline integer (`char`, `short`, `int`, `long`) or `boolean`/`byte`.
    Int,
    /// A constant pool reference to the class of this name.
    Ref(&'static str),
    /// An inline `java.lang.String`.
    Str,
    /// An inline array of the class of this name: read by the caller.
    Array(&'static str),
}

/// At most this many wanted fields per class.
pub const MAX_WANTS: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Step {
    /// An unbound field of one compressed int (a pool reference or an inline int).
    SkipVarint,
    /// Any other unbound field, read past by its metadata.
    Skip,
    Int(u8),
    Byte(u8),
    Str(u8),
    Array(u8),
}

#[derive(Debug, Clone)]
pub struct Plan {
    class: u32,
    steps: Vec<Step>,
    /// Whether a string is bound: only then are `Values::strs` cleared per record.
    strings: bool,
}

/// The values one record bound, by the index of their want.
#[derive(Debug, Default)]
pub struct Values<'a> {
    pub ints: [u64; MAX_WANTS],
    pub strs: [Option<JfrStr<'a>>; MAX_WANTS],
}

impl Values<'_> {
    #[inline]
    fn clear(&mut self, strings: bool) {
        self.ints = [0; MAX_WANTS];
        if strings {
            for s in &mut self.strs {
                *s = None;
            }
        }
    }
}

impl Plan {
    /// The plan for class `class` (an index into `types.classes`) binding `wants` by name;
    /// for an index past the classes (a class the chunk lacks), a plan that reads nothing.
    pub fn new(types: &Types, class: u32, wants: &[(&str, Expect)]) -> Plan {
        assert!(wants.len() <= MAX_WANTS, "a plan binds at most {MAX_WANTS} fields");
        let class_name = |id: u64| types.by_id(id).map_or("", |c| c.name.as_str());
        let fields = types.classes.get(class as usize).map_or(&[][..], |c| &c.fields[..]);
        let steps = fields
            .iter()
            .map(|f| {
                let skip = match (f.constant_pool, f.array, f.kind) {
                    (true, false, _) | (false, false, Kind::Varint) => Step::SkipVarint,
                    _ => Step::Skip,
                };
                let Some(slot) = wants.iter().position(|(n, _)| *n == f.name) else {
                    return skip;
                };
                let slot = slot as u8;
                match (wants[slot as usize].1, f.constant_pool, f.array, f.kind) {
                    (Expect::Int, false, false, Kind::Varint) => Step::Int(slot),
                    (Expect::Int, false, false, Kind::Byte) => Step::Byte(slot),
                    (Expect::Ref(name), true, false, _) if class_name(f.type_id) == name => Step::Int(slot),
                    (Expect::Str, false, false, Kind::Str) => Step::Str(slot),
                    (Expect::Array(name), false, true, Kind::Struct(_)) if class_name(f.type_id) == name => {
                        Step::Array(slot)
                    }
                    _ => skip,
                }
            })
            .collect::<Vec<_>>();
        let strings = steps.iter().any(|s| matches!(s, Step::Str(_)));
        Plan { class, steps, strings }
    }

    /// Reads one record into `v` (cleared first). An array field is handed to `array` with
    /// its want's index and its checked length, to read the elements itself.
    pub fn read<'a>(
        &self,
        types: &Types,
        r: &mut Reader<'a>,
        v: &mut Values<'a>,
        mut array: impl FnMut(&mut Reader<'a>, u8, usize) -> Result<(), JfrError>,
    ) -> Result<(), JfrError> {
        v.clear(self.strings);
        let fields = types.classes.get(self.class as usize).map_or(&[][..], |c| &c.fields[..]);
        for (step, f) in self.steps.iter().zip(fields) {
            match *step {
                Step::SkipVarint => {
                    r.varint(&f.name)?;
                }
                Step::Skip => types.skip_field(r, f)?,
                Step::Int(s) => v.ints[s as usize] = r.varint(&f.name)?,
                Step::Byte(s) => v.ints[s as usize] = u64::from(r.u8(&f.name)?),
                Step::Str(s) => v.strs[s as usize] = Some(r.string(&f.name)?),
                Step::Array(s) => {
                    let n = r.count(&f.name)?;
                    array(r, s, n)?;
                }
            }
        }
        Ok(())
    }
}
