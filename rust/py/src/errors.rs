//! The one place core errors become Python exceptions (ARCHITECTURE.md rule 4).
use kvroute_core::CoreError;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

pyo3::create_exception!(kvroute._native, KvrouteError, PyException, "Root of every kvroute error.");
pyo3::create_exception!(
    kvroute._native,
    MalformedRequest,
    KvrouteError,
    "The request body is not a valid OpenAI request; `param` names the offending field (or None)."
);
pyo3::create_exception!(kvroute._native, InvalidConfig, KvrouteError);
pyo3::create_exception!(kvroute._native, UnknownTicket, KvrouteError);
pyo3::create_exception!(kvroute._native, UnknownWait, KvrouteError);
pyo3::create_exception!(kvroute._native, UnknownBackend, KvrouteError);

pub fn to_pyerr(e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::MalformedRequest { param, .. } => Python::attach(|py| {
            let err = MalformedRequest::new_err(msg);
            // An instance attribute, so handlers can fill OpenAI's error.param without parsing text.
            let _ = err.value(py).setattr("param", param);
            err
        }),
        CoreError::InvalidConfig(_) => InvalidConfig::new_err(msg),
        CoreError::UnknownTicket(_) => UnknownTicket::new_err(msg),
        CoreError::UnknownWait(_) => UnknownWait::new_err(msg),
        CoreError::UnknownBackend(_) => UnknownBackend::new_err(msg),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("KvrouteError", py.get_type::<KvrouteError>())?;
    m.add("MalformedRequest", py.get_type::<MalformedRequest>())?;
    m.add("InvalidConfig", py.get_type::<InvalidConfig>())?;
    m.add("UnknownTicket", py.get_type::<UnknownTicket>())?;
    m.add("UnknownWait", py.get_type::<UnknownWait>())?;
    m.add("UnknownBackend", py.get_type::<UnknownBackend>())?;
    // Class-level default so `err.param` works even on instances raised from Python code.
    py.get_type::<MalformedRequest>().setattr("param", py.None())?;
    Ok(())
}
