//! A pickle scanner for PyTorch checkpoints that never executes anything: it walks the opcode
//! stream of protocols 0-5 with a symbolic stack, accepts only data opcodes and imports from a
//! short whitelist (the ones `torch.save` of a state dict uses), and records each tensor that
//! `torch._utils._rebuild_tensor_v2` would build: storage key, dtype, offset, shape, stride,
//! and the state-dict name it is stored under.
//!
//! Every value lives in an `Rc`, so memo gets copy nothing; tuples nest at most
//! [`MAX_DEPTH`] deep, so dropping them cannot overflow the stack. The stack, memo and tensor
//! list grow by at most one entry per opcode byte, so memory is linear in the input.

// `Problem` is large (it carries the precise location), but it is built once, on the path
// that ends verification; boxing it would only obscure the fields callers read.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use crate::problem::{Problem, ProblemKind};

/// Deepest tuple nesting accepted (state dicts use 3 or 4).
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The state-dict key, when the tensor was stored under a string key.
    pub name: Option<String>,
    pub storage_key: String,
    /// SafeTensors-style dtype name (F32, F16, BF16, ...).
    pub dtype: &'static str,
    pub element_bytes: u64,
    /// Elements in the storage as its persistent id says.
    pub storage_numel: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
    /// Byte offset of the REDUCE that builds it (in the pickle).
    pub pickle_offset: u64,
}

impl TensorRef {
    pub fn n_elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }
    /// One past the last storage element the tensor reads (0 for an empty tensor).
    pub fn extent(&self) -> Option<u64> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        self.shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&d, &s)| {
                acc.checked_add((d - 1).checked_mul(s)?)
            })?
            .checked_add(1)
    }
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("<tensor on storage {}>", self.storage_key))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PickleScan {
    pub tensors: Vec<TensorRef>,
    /// Every import the pickle makes (all on the whitelist).
    pub globals: BTreeSet<String>,
    pub opcodes: u64,
}

/// dtype and element size of a legacy typed-storage class.
fn storage_dtype(name: &str) -> Option<(&'static str, u64)> {
    Some(match name {
        "FloatStorage" => ("F32", 4),
        "HalfStorage" => ("F16", 2),
        "BFloat16Storage" => ("BF16", 2),
        "DoubleStorage" => ("F64", 8),
        "LongStorage" => ("I64", 8),
        "IntStorage" => ("I32", 4),
        "ShortStorage" => ("I16", 2),
        "CharStorage" => ("I8", 1),
        "ByteStorage" => ("U8", 1),
        "BoolStorage" => ("BOOL", 1),
        "ComplexFloatStorage" => ("C64", 8),
        "ComplexDoubleStorage" => ("C128", 16),
        "Float8_e4m3fnStorage" => ("F8_E4M3", 1),
        "Float8_e5m2Storage" => ("F8_E5M2", 1),
        _ => return None,
    })
}

/// Imports `torch.load(weights_only=True)` would also accept for a plain state dict.
fn allowed_global(module: &str, name: &str) -> bool {
    match module {
        "collections" => name == "OrderedDict",
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
        ),
        "torch" => storage_dtype(name).is_some(),
        _ => false,
    }
}

#[derive(Debug)]
enum Val {
    None,
    Bool,
    Int(i64),
    Str(String),
    Global(String, String),
    Tuple(Vec<V>, usize),
    Storage {
        key: String,
        dtype: &'static str,
        element_bytes: u64,
        numel: u64,
    },
    Tensor(usize),
    /// Lists, dicts, sets, bytes, floats, big ints: contents not needed.
    Other,
}

type V = Rc<Val>;

fn depth(v: &V) -> usize {
    match **v {
        Val::Tuple(_, d) => d,
        _ => 0,
    }
}

struct Scanner<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u64, V>,
    out: PickleScan,
}

fn problem(kind: ProblemKind, at: usize, msg: String) -> Problem {
    Problem::new(kind, msg).at(at as u64)
}

impl<'a> Scanner<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Problem> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(problem(
                ProblemKind::Truncated,
                self.pos,
                format!(
                    "the pickle ends inside {what}: {n} bytes needed at byte {}, {} left",
                    self.pos,
                    self.data.len().saturating_sub(self.pos)
                ),
            ));
        };
        let s = self.data.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Problem> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len_prefixed(&mut self, width: usize, what: &str) -> Result<&'a [u8], Problem> {
        let at = self.pos;
        let n: u64 = match width {
            1 => u64::from(self.arr::<1>(what)?[0]),
            4 => u64::from(u32::from_le_bytes(self.arr(what)?)),
            _ => u64::from_le_bytes(self.arr(what)?),
        };
        let n = usize::try_from(n).map_err(|_| {
            problem(
                ProblemKind::Truncated,
                at,
                format!("{what} length {n} is past the end"),
            )
        })?;
        self.take(n, what)
    }

    fn line(&mut self, what: &str) -> Result<&'a [u8], Problem> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(problem(
                ProblemKind::Truncated,
                self.pos,
                format!("the pickle ends inside {what} (no newline)"),
            ));
        };
        let s = rest.get(..n).unwrap_or_default();
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Val) {
        self.stack.push(Rc::new(v));
    }

    fn pop(&mut self, at: usize, op: &str) -> Result<V, Problem> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(problem(
                ProblemKind::BadPickle,
                at,
                format!("{op} at byte {at} pops an empty stack"),
            ));
        }
        self.stack
            .pop()
            .ok_or_else(|| problem(ProblemKind::BadPickle, at, format!("{op}: empty stack")))
    }

    fn pop_mark(&mut self, at: usize, op: &str) -> Result<Vec<V>, Problem> {
        let Some(m) = self.marks.pop() else {
            return Err(problem(
                ProblemKind::BadPickle,
                at,
                format!("{op} at byte {at} has no MARK"),
            ));
        };
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn tuple(&mut self, items: Vec<V>, at: usize) -> Result<(), Problem> {
        let d = items.iter().map(depth).max().unwrap_or(0) + 1;
        if d > MAX_DEPTH {
            return Err(problem(
                ProblemKind::BadPickle,
                at,
                format!("tuples nest deeper than {MAX_DEPTH} at byte {at}"),
            ));
        }
        self.push(Val::Tuple(items, d));
        Ok(())
    }

    fn global(&mut self, module: &str, name: &str, at: usize) -> Result<(), Problem> {
        if !allowed_global(module, name) {
            return Err(problem(
                ProblemKind::DisallowedImport,
                at,
                format!("the pickle imports {module}.{name} at byte {at}, which a plain state dict never needs (only OrderedDict, torch storages and torch._utils rebuild functions are allowed)"),
            )
            .expected("collections.OrderedDict, torch.*Storage, torch._utils._rebuild_*")
            .found(format!("{module}.{name}")));
        }
        self.out.globals.insert(format!("{module}.{name}"));
        self.push(Val::Global(module.into(), name.into()));
        Ok(())
    }

    fn memo_key(&mut self, op: u8) -> Result<u64, Problem> {
        let at = self.pos;
        Ok(match op {
            b'h' | b'q' => u64::from(self.arr::<1>("memo index")?[0]),
            b'j' | b'r' => u64::from(u32::from_le_bytes(self.arr("memo index")?)),
            _ => {
                let l = self.line("memo index")?;
                std::str::from_utf8(l)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| {
                        problem(ProblemKind::BadPickle, at, "bad text memo index".into())
                    })?
            }
        })
    }

    fn persistent_load(&mut self, pid: &V, at: usize) -> Result<Val, Problem> {
        let bad = |why: &str| {
            problem(
                ProblemKind::BadPickle,
                at,
                format!("persistent id at byte {at} is not a torch storage reference: {why}"),
            )
            .expected("('storage', torch.<Type>Storage, key, location, numel)")
        };
        let Val::Tuple(items, _) = &**pid else {
            return Err(bad("not a tuple"));
        };
        let [tag, ty, key, _location, numel] = items.as_slice() else {
            return Err(bad("not 5 items"));
        };
        if !matches!(&**tag, Val::Str(s) if s == "storage") {
            return Err(bad("the first item is not 'storage'"));
        }
        let Val::Global(_, ty) = &**ty else {
            return Err(bad("no storage type"));
        };
        let (dtype, element_bytes) = storage_dtype(ty).ok_or_else(|| bad("unknown storage"))?;
        let Val::Str(key) = &**key else {
            return Err(bad("the key is not a string"));
        };
        let Val::Int(numel) = **numel else {
            return Err(bad("numel is not an integer"));
        };
        let numel = u64::try_from(numel).map_err(|_| bad("negative numel"))?;
        Ok(Val::Storage {
            key: key.clone(),
            dtype,
            element_bytes,
            numel,
        })
    }

    fn ints(v: &V) -> Option<Vec<u64>> {
        match &**v {
            Val::Tuple(items, _) => items
                .iter()
                .map(|i| match **i {
                    Val::Int(n) => u64::try_from(n).ok(),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    fn reduce(&mut self, func: &V, args: &V, at: usize) -> Result<Val, Problem> {
        let (Val::Global(module, name), Val::Tuple(a, _)) = (&**func, &**args) else {
            return Ok(Val::Other);
        };
        if module != "torch._utils" {
            return Ok(Val::Other);
        }
        match name.as_str() {
            "_rebuild_tensor_v2" => {
                let bad = |why: &str| {
                    problem(
                        ProblemKind::BadPickle,
                        at,
                        format!("_rebuild_tensor_v2 at byte {at}: {why}"),
                    )
                };
                let (Some(storage), Some(offset), Some(size), Some(stride)) =
                    (a.first(), a.get(1), a.get(2), a.get(3))
                else {
                    return Err(bad("fewer than 4 arguments"));
                };
                let Val::Storage {
                    key,
                    dtype,
                    element_bytes,
                    numel,
                } = &**storage
                else {
                    return Err(bad("the first argument is not a storage"));
                };
                let Val::Int(offset) = **offset else {
                    return Err(bad("the storage offset is not an integer"));
                };
                let offset = u64::try_from(offset).map_err(|_| bad("negative storage offset"))?;
                let shape = Self::ints(size).ok_or_else(|| bad("size is not a tuple of ints"))?;
                let stride =
                    Self::ints(stride).ok_or_else(|| bad("stride is not a tuple of ints"))?;
                if shape.len() != stride.len() {
                    return Err(bad("size and stride differ in length"));
                }
                self.out.tensors.push(TensorRef {
                    name: None,
                    storage_key: key.clone(),
                    dtype,
                    element_bytes: *element_bytes,
                    storage_numel: *numel,
                    offset,
                    shape,
                    stride,
                    pickle_offset: at as u64,
                });
                Ok(Val::Tensor(self.out.tensors.len() - 1))
            }
            "_rebuild_parameter" | "_rebuild_parameter_with_state" => match a.first() {
                Some(t) if matches!(**t, Val::Tensor(_)) => {
                    let Val::Tensor(i) = **t else {
                        return Ok(Val::Other);
                    };
                    Ok(Val::Tensor(i))
                }
                _ => Ok(Val::Other),
            },
            _ => Ok(Val::Other),
        }
    }

    fn name_items(&mut self, items: &[V]) {
        for pair in items.chunks(2) {
            if let [k, v] = pair {
                if let (Val::Str(k), Val::Tensor(i)) = (&**k, &**v) {
                    if let Some(t) = self.out.tensors.get_mut(*i) {
                        t.name.get_or_insert_with(|| k.clone());
                    }
                }
            }
        }
    }

    fn run(mut self) -> Result<PickleScan, Problem> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(at) else {
                return Err(problem(
                    ProblemKind::Truncated,
                    at,
                    format!("the pickle ends at byte {at} without a STOP opcode"),
                ));
            };
            self.pos += 1;
            self.out.opcodes += 1;
            let name = format!("opcode 0x{op:02x}");
            match op {
                b'.' => return Ok(self.out),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop(at, "POP")?;
                }
                b'1' => {
                    self.pop_mark(at, "POP_MARK")?;
                }
                b'2' => {
                    let v = self.pop(at, "DUP")?;
                    self.stack.push(Rc::clone(&v));
                    self.stack.push(v);
                }
                b'F' => {
                    self.line("FLOAT")?;
                    self.push(Val::Other);
                }
                b'I' | b'L' => {
                    let l = self.line("INT")?;
                    let s = std::str::from_utf8(l).unwrap_or("");
                    let s = s.trim_end_matches('L');
                    self.push(match s {
                        "00" => Val::Bool,
                        "01" => Val::Bool,
                        _ => s.parse().map(Val::Int).unwrap_or(Val::Other),
                    });
                }
                b'J' => {
                    let n = i32::from_le_bytes(self.arr("BININT")?);
                    self.push(Val::Int(i64::from(n)));
                }
                b'K' => {
                    let n = self.arr::<1>("BININT1")?[0];
                    self.push(Val::Int(i64::from(n)));
                }
                b'M' => {
                    let n = u16::from_le_bytes(self.arr("BININT2")?);
                    self.push(Val::Int(i64::from(n)));
                }
                0x8a | 0x8b => {
                    let b = self.len_prefixed(if op == 0x8a { 1 } else { 4 }, "LONG")?;
                    let v = if b.len() <= 8 {
                        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                            0xff
                        } else {
                            0
                        };
                        let mut a = [fill; 8];
                        if let Some(dst) = a.get_mut(..b.len()) {
                            dst.copy_from_slice(b);
                        }
                        Val::Int(i64::from_le_bytes(a))
                    } else {
                        Val::Other
                    };
                    self.push(v);
                }
                b'N' => self.push(Val::None),
                0x88 | 0x89 => self.push(Val::Bool),
                b'G' => {
                    self.arr::<8>("BINFLOAT")?;
                    self.push(Val::Other);
                }
                b'S' | b'V' => {
                    let l = self.line("STRING")?;
                    let s = String::from_utf8_lossy(l);
                    let s = s.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Val::Str(s));
                }
                b'T' | b'X' | b'U' | 0x8c | 0x8d => {
                    let w = match op {
                        b'U' | 0x8c => 1,
                        b'T' | b'X' => 4,
                        _ => 8,
                    };
                    let b = self.len_prefixed(w, "string")?;
                    self.push(Val::Str(String::from_utf8_lossy(b).into_owned()));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let w = match op {
                        b'C' => 1,
                        b'B' => 4,
                        _ => 8,
                    };
                    self.len_prefixed(w, "bytes")?;
                    self.push(Val::Other);
                }
                b')' => self.tuple(Vec::new(), at)?,
                b't' => {
                    let items = self.pop_mark(at, "TUPLE")?;
                    self.tuple(items, at)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop(at, "TUPLEn")?);
                    }
                    items.reverse();
                    self.tuple(items, at)?;
                }
                b']' | b'}' | 0x8f => self.push(Val::Other),
                b'l' | b'd' | 0x91 => {
                    let items = self.pop_mark(at, "LIST/DICT")?;
                    if op == b'd' {
                        self.name_items(&items);
                    }
                    self.push(Val::Other);
                }
                b'a' => {
                    self.pop(at, "APPEND")?;
                    self.pop(at, "APPEND")?;
                    self.push(Val::Other);
                }
                b'e' | 0x90 => {
                    self.pop_mark(at, "APPENDS")?;
                    self.pop(at, "APPENDS")?;
                    self.push(Val::Other);
                }
                b's' => {
                    let v = self.pop(at, "SETITEM")?;
                    let k = self.pop(at, "SETITEM")?;
                    self.name_items(&[k, v]);
                    let d = self.pop(at, "SETITEM")?;
                    self.stack.push(d);
                }
                b'u' => {
                    let items = self.pop_mark(at, "SETITEMS")?;
                    self.name_items(&items);
                    let d = self.pop(at, "SETITEMS")?;
                    self.stack.push(d);
                }
                b'b' => {
                    self.pop(at, "BUILD")?;
                    let o = self.pop(at, "BUILD")?;
                    self.stack.push(o);
                }
                b'c' => {
                    let m = String::from_utf8_lossy(self.line("GLOBAL module")?).into_owned();
                    let n = String::from_utf8_lossy(self.line("GLOBAL name")?).into_owned();
                    self.global(&m, &n, at)?;
                }
                0x93 => {
                    let n = self.pop(at, "STACK_GLOBAL")?;
                    let m = self.pop(at, "STACK_GLOBAL")?;
                    let (Val::Str(m), Val::Str(n)) = (&*m, &*n) else {
                        return Err(problem(
                            ProblemKind::BadPickle,
                            at,
                            format!("STACK_GLOBAL at byte {at} needs two strings"),
                        ));
                    };
                    let (m, n) = (m.clone(), n.clone());
                    self.global(&m, &n, at)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop(at, "REDUCE")?;
                    let func = self.pop(at, "REDUCE")?;
                    if !matches!(*func, Val::Global(..)) {
                        return Err(problem(
                            ProblemKind::BadPickle,
                            at,
                            format!(
                                "REDUCE at byte {at} calls something that is not an allowed import"
                            ),
                        ));
                    }
                    let v = self.reduce(&func, &args, at)?;
                    self.push(v);
                }
                b'Q' => {
                    let pid = self.pop(at, "BINPERSID")?;
                    let v = self.persistent_load(&pid, at)?;
                    self.push(v);
                }
                b'g' | b'h' | b'j' => {
                    let k = self.memo_key(op)?;
                    let v = self.memo.get(&k).cloned().ok_or_else(|| {
                        problem(
                            ProblemKind::BadPickle,
                            at,
                            format!("memo get of {k} at byte {at}, which was never put"),
                        )
                    })?;
                    self.stack.push(v);
                }
                b'p' | b'q' | b'r' => {
                    let k = self.memo_key(op)?;
                    let v = self.stack.last().cloned().ok_or_else(|| {
                        problem(
                            ProblemKind::BadPickle,
                            at,
                            format!("memo put at byte {at} of nothing"),
                        )
                    })?;
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    let v = self.stack.last().cloned().ok_or_else(|| {
                        problem(
                            ProblemKind::BadPickle,
                            at,
                            format!("MEMOIZE at byte {at} of nothing"),
                        )
                    })?;
                    self.memo.insert(k, v);
                }
                0x80 => {
                    let v = self.arr::<1>("PROTO")?[0];
                    if v > 5 {
                        return Err(problem(
                            ProblemKind::BadPickle,
                            at,
                            format!("pickle protocol {v} is not known (0-5 are)"),
                        ));
                    }
                }
                0x95 => {
                    self.arr::<8>("FRAME")?;
                }
                _ => {
                    let what = match op {
                        b'i' | b'o' => "INST/OBJ (instances by class name)",
                        0x92 => "NEWOBJ_EX",
                        0x82..=0x84 => "EXT (extension registry imports)",
                        b'P' => "PERSID (text persistent ids)",
                        0x97 | 0x98 => "out-of-band buffers",
                        _ => name.as_str(),
                    };
                    return Err(problem(
                        ProblemKind::DisallowedOpcode,
                        at,
                        format!("{what} at byte {at} is not allowed in a state dict"),
                    )
                    .found(format!("0x{op:02x}")));
                }
            }
        }
    }
}

/// Scans a pickle (e.g. a checkpoint's `data.pkl`) without executing it.
pub fn scan(data: &[u8]) -> Result<PickleScan, Problem> {
    Scanner {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        out: PickleScan::default(),
    }
    .run()
}
