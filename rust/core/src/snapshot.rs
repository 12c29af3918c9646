//! A plain value tree for `Router.snapshot()`: the binding converts it generically to Python
//! dicts/lists, so adding a field never touches the binding.

#[derive(Clone, Debug, PartialEq)]
pub enum Snap {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Snap>),
    Map(Vec<(String, Snap)>),
}

impl Snap {
    pub fn get(&self, key: &str) -> Option<&Snap> {
        match self {
            Snap::Map(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl From<bool> for Snap {
    fn from(v: bool) -> Self {
        Snap::Bool(v)
    }
}
impl From<u64> for Snap {
    fn from(v: u64) -> Self {
        Snap::Int(v.min(i64::MAX as u64) as i64)
    }
}
impl From<usize> for Snap {
    fn from(v: usize) -> Self {
        Snap::from(v as u64)
    }
}
impl From<f64> for Snap {
    fn from(v: f64) -> Self {
        Snap::Float(v)
    }
}
impl From<&str> for Snap {
    fn from(v: &str) -> Self {
        Snap::Str(v.to_owned())
    }
}
impl From<String> for Snap {
    fn from(v: String) -> Self {
        Snap::Str(v)
    }
}
impl<T: Into<Snap>> From<Option<T>> for Snap {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Snap::Null)
    }
}

/// Builds a `Snap::Map` without ceremony: `map(vec![kv("a", 1u64), ...])`.
pub fn kv(k: &str, v: impl Into<Snap>) -> (String, Snap) {
    (k.to_owned(), v.into())
}
