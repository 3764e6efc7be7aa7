//! A pickle reader that builds values and never runs code.
//!
//! PyTorch checkpoints are pickles. Python's unpickler imports and calls whatever the file names,
//! which is how a downloaded `.pth` can run arbitrary code. This reader implements the opcodes that
//! plain data uses (numbers, strings, tuples, lists, dicts) and resolves a short allow-list of
//! callables to data constructors (`OrderedDict`, torch's tensor rebuilders and storage types).
//! Any other global, and the opcodes that instantiate classes (`INST`, `OBJ`, `NEWOBJ`), is an
//! error naming what the file asked for.

use anyhow::{Result, anyhow};
use std::collections::HashMap;

/// The element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F64,
    F32,
    F16,
    Bf16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::Bf16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::Bf16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A tensor that a pickle describes: a view into a storage that lives elsewhere in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage_key: String,
    pub dtype: StorageDtype,
    /// Elements in the whole storage.
    pub storage_numel: usize,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// Elements in the view, or `None` if that overflows.
    pub fn numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
    /// The storage index of the view's furthest element (meaningful when no dimension is 0), or
    /// `None` if that overflows.
    pub fn last_element(&self) -> Option<usize> {
        if self.shape.len() != self.stride.len() {
            return None;
        }
        self.shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&d, &s)| d.saturating_sub(1).checked_mul(s).and_then(|x| x.checked_add(acc)))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered, like the `OrderedDict`s PyTorch writes.
    Dict(Vec<(Value, Value)>),
    /// A callable from the allow-list, not yet called.
    Global(String, String),
    /// A storage named by a persistent id.
    Storage {
        key: String,
        dtype: StorageDtype,
        numel: usize,
    },
    Tensor(TensorRef),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => usize::try_from(*i).ok(),
            _ => None,
        }
    }
    fn as_usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

/// Callables a checkpoint may name. Everything here builds data; nothing else is accepted.
fn allowed(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        ("collections", "OrderedDict")
            | ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_parameter")
            | ("torch", "Size")
    ) || (module == "torch" && StorageDtype::from_storage_class(name).is_some())
}

/// How deep containers may nest. State dicts nest a handful of levels; the bound keeps every
/// recursive walk (drop, clone, comparison, tensor collection) far from the thread's stack limit.
pub const MAX_DEPTH: u32 = 64;

/// How big a value is, tracked beside it so that limits cost nothing to check.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    depth: u32,
    /// Roughly one per value plus one per 8 bytes of string data: a stand-in for memory.
    cells: u64,
}

impl Size {
    fn leaf(bytes: usize) -> Self {
        Size { depth: 0, cells: 1 + bytes as u64 / 8 }
    }
    /// Several values together, as one item (what SETITEMS and APPENDS add to a container).
    fn group(children: impl IntoIterator<Item = Size>) -> Self {
        children.into_iter().fold(Size { depth: 0, cells: 0 }, |acc, c| Size {
            depth: acc.depth.max(c.depth),
            cells: acc.cells.saturating_add(c.cells),
        })
    }
    fn container(children: impl IntoIterator<Item = Size>) -> Self {
        Size { depth: 0, cells: 1 }.holding(Self::group(children))
    }
    /// This container after `child` is put into it.
    fn holding(self, child: Size) -> Self {
        Size { depth: self.depth.max(child.depth + 1), cells: self.cells.saturating_add(child.cells) }
    }
}

enum Item {
    Mark,
    Value(Value, Size),
}

/// Reads one pickle from `bytes` (which may continue past its STOP); returns the value and the
/// number of bytes consumed. `what` names the file in errors.
///
/// Hostile input costs bounded memory and stack: containers nest at most [`MAX_DEPTH`] levels,
/// and memo reads (which copy, since values are not shared) may copy at most a few times the
/// file's own size, which stops "billion laughs" pickles that double a list at every step.
pub fn read(bytes: &[u8], what: &str) -> Result<(Value, usize)> {
    let copy_budget = 1_000_000 + 8 * bytes.len() as u64;
    Reader { bytes, pos: 0, stack: Vec::new(), memo: HashMap::new(), what, copy_budget }.run()
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: HashMap<u64, (Value, Size)>,
    what: &'a str,
    /// Cells that memo reads may still copy.
    copy_budget: u64,
}

impl Reader<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: pickle at byte {}: {msg}", self.what, self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(self.err("file ends inside a pickle (truncated?)"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("unterminated GLOBAL"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?.to_vec();
        String::from_utf8(b).map_err(|_| self.err("string is not UTF-8"))
    }

    /// Pushes a scalar, a string or bytes.
    fn push(&mut self, v: Value) {
        let bytes = match &v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        };
        self.stack.push(Item::Value(v, Size::leaf(bytes)));
    }
    fn push_sized(&mut self, v: Value, size: Size) -> Result<()> {
        if size.depth > MAX_DEPTH {
            return Err(self.err(format!("containers nest deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(Item::Value(v, size));
        Ok(())
    }
    /// Pushes a container built from `items`.
    fn push_container(&mut self, items: Vec<(Value, Size)>, build: fn(Vec<Value>) -> Value) -> Result<()> {
        let size = Size::container(items.iter().map(|(_, s)| *s));
        let v = build(items.into_iter().map(|(v, _)| v).collect());
        self.push_sized(v, size)
    }
    fn pop_sized(&mut self) -> Result<(Value, Size)> {
        match self.stack.pop() {
            Some(Item::Value(v, s)) => Ok((v, s)),
            Some(Item::Mark) => Err(self.err("unexpected MARK on the stack")),
            None => Err(self.err("stack underflow")),
        }
    }
    fn pop(&mut self) -> Result<Value> {
        Ok(self.pop_sized()?.0)
    }
    /// The container on top of the stack, after `added` is put into it.
    fn top(&mut self, added: Size) -> Result<&mut Value> {
        let pos = self.pos;
        let what = self.what;
        match self.stack.last_mut() {
            Some(Item::Value(v, s)) => {
                *s = s.holding(added);
                if s.depth > MAX_DEPTH {
                    return Err(anyhow!(
                        "{what}: pickle at byte {pos}: containers nest deeper than {MAX_DEPTH} levels"
                    ));
                }
                Ok(v)
            }
            _ => Err(anyhow!("{what}: pickle: expected a value on the stack")),
        }
    }
    /// Values pushed since the last MARK (which is removed).
    fn pop_mark(&mut self) -> Result<Vec<(Value, Size)>> {
        let start = self.stack.iter().rposition(|i| matches!(i, Item::Mark)).ok_or_else(|| self.err("no MARK"))?;
        let items = self.stack.split_off(start + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|i| match i {
                Item::Value(v, s) => (v, s),
                Item::Mark => unreachable!("marks after the last mark"),
            })
            .collect())
    }
    fn memo_put(&mut self, index: u64) -> Result<()> {
        let entry = match self.stack.last() {
            Some(Item::Value(v, s)) => (v.clone(), *s),
            _ => return Err(self.err("PUT without a value")),
        };
        self.memo.insert(index, entry);
        Ok(())
    }
    fn memo_get(&mut self, index: u64) -> Result<()> {
        let (v, size) = self.memo.get(&index).cloned().ok_or_else(|| self.err(format!("memo {index} is empty")))?;
        if size.cells > self.copy_budget {
            return Err(self.err(
                "memo references copy far more data than the file holds (a pickle bomb?); refusing to expand it",
            ));
        }
        self.copy_budget -= size.cells;
        self.push_sized(v, size)
    }
    fn global(&self, module: String, name: String) -> Result<Value> {
        if allowed(&module, &name) {
            Ok(Value::Global(module, name))
        } else {
            Err(anyhow!(
                "{}: refusing to load `{module}.{name}`: the file asks to run Python code, and finetune reads \
                 only tensors and plain containers from checkpoints (re-save the state_dict, or convert to safetensors)",
                self.what
            ))
        }
    }

    fn run(mut self) -> Result<(Value, usize)> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, self.pos));
                }
                b'(' => self.stack.push(Item::Mark),
                b')' => self.push(Value::Tuple(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b'}' => self.push(Value::Dict(Vec::new())),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop_sized()?);
                    }
                    items.reverse();
                    self.push_container(items, Value::Tuple)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::Tuple)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, Value::List)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push_container(items, |items| Value::Dict(pairs(items)))?;
                }
                b'q' => {
                    let i = self.u8()? as u64;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()? as u64;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u64;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()? as u64;
                    self.memo_get(i)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.push(Value::Int(v as i128));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                    self.push(Value::Int(v as i128));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    if n > 16 {
                        return Err(self.err(format!("integer of {n} bytes is too large")));
                    }
                    let b = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let s = self.string(n)?;
                    self.push(Value::Str(s));
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.global(module, name)?;
                    self.push(g);
                }
                b'R' => {
                    // What a call returns is built from its arguments, and is no bigger.
                    let (args, size) = self.pop_sized()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push_sized(v, size)?;
                }
                b'b' => {
                    // BUILD sets an object's state. The only objects we build are dicts (an
                    // OrderedDict's `_metadata` attribute arrives this way); the state is dropped.
                    let _state = self.pop()?;
                    if !matches!(self.top(Size::default())?, Value::Dict(_)) {
                        return Err(self.err("BUILD on something other than a dict"));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v);
                }
                b's' => {
                    let (value, vs) = self.pop_sized()?;
                    let (key, ks) = self.pop_sized()?;
                    match self.top(Size::group([vs, ks]))? {
                        Value::Dict(d) => d.push((key, value)),
                        _ => return Err(self.err("SETITEM on something other than a dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let size = Size::group(items.iter().map(|(_, s)| *s));
                    let items = items.into_iter().map(|(v, _)| v).collect();
                    match self.top(size)? {
                        Value::Dict(d) => d.extend(pairs(items)),
                        _ => return Err(self.err("SETITEMS on something other than a dict")),
                    }
                }
                b'a' => {
                    let (value, size) = self.pop_sized()?;
                    match self.top(size)? {
                        Value::List(l) => l.push(value),
                        _ => return Err(self.err("APPEND on something other than a list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let size = Size::group(items.iter().map(|(_, s)| *s));
                    let items: Vec<Value> = items.into_iter().map(|(v, _)| v).collect();
                    match self.top(size)? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.err("APPENDS on something other than a list")),
                    }
                }
                b'i' | b'o' | 0x81 | 0x92 => {
                    return Err(anyhow!(
                        "{}: refusing to load: the pickle instantiates a Python class (opcode 0x{op:02x}); \
                         finetune reads only tensors and plain containers from checkpoints",
                        self.what
                    ));
                }
                _ => return Err(self.err(format!("unsupported pickle opcode 0x{op:02x}"))),
            }
        }
    }

    fn call(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(module, name) = callable else {
            return Err(self.err("REDUCE on something that is not an allowed callable"));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
            ("torch", "Size") => Ok(args.into_iter().next().unwrap_or(Value::Tuple(Vec::new()))),
            ("torch._utils", "_rebuild_parameter") => {
                args.into_iter().next().ok_or_else(|| self.err("_rebuild_parameter without data"))
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let bad = || self.err(format!("malformed {name} arguments"));
                if args.len() < 4 {
                    return Err(bad());
                }
                let Value::Storage { key, dtype, numel } = &args[0] else {
                    return Err(self.err(format!("{name}: first argument is not a storage")));
                };
                let offset = args[1].as_usize().ok_or_else(bad)?;
                let shape = args[2].as_usizes().ok_or_else(bad)?;
                let stride = args[3].as_usizes().ok_or_else(bad)?;
                if shape.len() != stride.len() {
                    return Err(bad());
                }
                let t =
                    TensorRef { storage_key: key.clone(), dtype: *dtype, storage_numel: *numel, offset, shape, stride };
                // The furthest element the view touches must lie inside the storage.
                let empty = t.numel() == Some(0);
                if !empty && t.last_element().is_none_or(|last| last >= *numel) {
                    return Err(self.err(format!(
                        "tensor view {:?} at offset {offset} reaches past its storage of {numel} elements",
                        t.shape
                    )));
                }
                Ok(Value::Tensor(t))
            }
            _ => Err(self.err(format!("{module}.{name} cannot be called"))),
        }
    }

    /// torch's persistent ids: `("storage", <StorageClass>, key, location, numel[, view])`.
    fn persistent(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(t) = pid else {
            return Err(self.err("persistent id is not a tuple"));
        };
        match t.as_slice() {
            [Value::Str(kind), Value::Global(_, class), key, _location, numel, ..] if kind == "storage" => {
                let dtype = StorageDtype::from_storage_class(class)
                    .ok_or_else(|| self.err(format!("unknown storage type {class}")))?;
                let key = match key {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => return Err(self.err("storage key is not a string")),
                };
                let numel = numel.as_usize().ok_or_else(|| self.err("storage size is not an integer"))?;
                Ok(Value::Storage { key, dtype, numel })
            }
            _ => Err(self.err("persistent id is not a torch storage")),
        }
    }
}

fn pairs(items: Vec<Value>) -> Vec<(Value, Value)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_containers() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let (v, used) = read(bytes, "t").unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::List(vec![Value::Int(1), Value::Float(2.5), Value::Str("x".into())])),
                (Value::Str("b".into()), Value::Tuple(vec![Value::Bool(true), Value::None])),
            ])
        );
    }

    #[test]
    fn refuses_code() {
        // pickle.dumps(os.system) style: GLOBAL 'os system', then REDUCE with ('echo hi',)
        let bytes = b"\x80\x02cos\nsystem\nq\x00X\x07\x00\x00\x00echo hiq\x01\x85q\x02Rq\x03.";
        let e = read(bytes, "evil.pth").unwrap_err().to_string();
        assert!(e.contains("evil.pth") && e.contains("refusing to load `os.system`"), "{e}");
        // builtins.eval through STACK_GLOBAL
        let bytes = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let e = read(bytes, "x").unwrap_err().to_string();
        assert!(e.contains("builtins.eval"), "{e}");
        // NEWOBJ instantiates a class
        let bytes = b"\x80\x02ccollections\nOrderedDict\n)\x81.";
        assert!(read(bytes, "x").unwrap_err().to_string().contains("instantiates a Python class"));
    }

    #[test]
    fn hostile_pickles_cost_bounded_memory_and_stack() {
        // A list nested a million levels deep: `]` a million times, then APPEND as often.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 1_000_000));
        deep.extend(std::iter::repeat_n(b'a', 999_999));
        deep.push(b'.');
        let e = read(&deep, "deep.pkl").unwrap_err().to_string();
        assert!(e.contains("deep.pkl") && e.contains("nest deeper than 64"), "{e}");
        // The same through MARK/LIST.
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b'(', 100_000));
        deep.extend(std::iter::repeat_n(b'l', 100_000));
        deep.push(b'.');
        assert!(read(&deep, "x").unwrap_err().to_string().contains("nest deeper"));
        // Billion laughs: forty times `x = [x, x]` through the memo (EMPTY_LIST, MARK, GET 0,
        // GET 0, APPENDS, PUT 0), doubling the copied data each time.
        let mut laughs = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            laughs.extend_from_slice(b"](h\x00h\x00eq\x00");
        }
        laughs.push(b'.');
        let e = read(&laughs, "laughs.pkl").unwrap_err().to_string();
        assert!(e.contains("laughs.pkl") && e.contains("pickle bomb"), "{e}");
        // Memo indices far apart do not allocate the gap.
        let bytes = b"\x80\x02Nr\xff\xff\xff\xffj\xff\xff\xff\xff.";
        assert_eq!(read(bytes, "t").unwrap().0, Value::None);
        // A tensor view whose extent overflows is an error, not a wrap-around.
        let mut b = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        b.extend_from_slice(
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ",
        );
        b.extend_from_slice(b"K\x00K\x05\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x86"); // offset 0, shape (5, 2^62)
        b.extend_from_slice(b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40K\x01\x86"); // stride (2^62, 1)
        b.extend_from_slice(b"tR.");
        let e = read(&b, "view.pth").unwrap_err().to_string();
        assert!(e.contains("reaches past its storage"), "{e}");
    }

    #[test]
    fn negative_and_big_integers() {
        // LONG1 of 10 bytes: torch's legacy magic number 0x1950a86a20f9469cfc6c
        let bytes = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
        assert_eq!(read(bytes, "t").unwrap().0, Value::Int(0x1950a86a20f9469cfc6c));
        let bytes = b"\x80\x02J\xff\xff\xff\xff.";
        assert_eq!(read(bytes, "t").unwrap().0, Value::Int(-1));
        let bytes = b"\x80\x02\x8a\x01\xfe.";
        assert_eq!(read(bytes, "t").unwrap().0, Value::Int(-2));
    }
}
