//! TFLite resource variables (the ring-buffer state of streaming models such as microWakeWord
//! keyword spotters) as extra graph inputs and outputs, which the runner carries between runs.
//!
//! A streaming model declares its state with `VAR_HANDLE`, sets it once from constants in the
//! subgraph `CALL_ONCE` names, reads it with `READ_VARIABLE` and writes the next step's value
//! with `ASSIGN_VARIABLE`. tract reads none of that (it panics inside its flatbuffer reader).
//! In the copy, each variable the graph reads before writing becomes a graph input (after the
//! model's own) and its last written value a graph output (after the model's own); the runner
//! feeds the initial values first, then each run's outputs to the next run: a sequence of
//! samples is verified as the stream LiteRT's interpreter runs, state included.

use super::{tensor_const, Const, Lowering};
use crate::tflite::{builtin_of, TfliteDocument};
use crate::tflite_gen::tflite as fb;
use bytes::Bytes;
use std::collections::HashMap;

/// The state the lowered copy carries: graph input `inputs[k]` takes what graph output
/// `outputs[k]` gave on the previous run, and `initial[k]` (raw little-endian bytes, the
/// variable's type) on the first.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamState {
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    pub initial: Vec<Vec<u8>>,
}

type Key = (String, String);

/// Rewrites the variables of subgraph 0 as described in the module doc. Leaves the model alone
/// (and returns `None`) when it has none, when another subgraph is called (IF, WHILE, CALL), or
/// when an initial value is not a constant of the variable's type and size.
pub(super) fn variables(d: &mut TfliteDocument, report: &mut Lowering) -> Option<StreamState> {
    use fb::BuiltinOperator as B;
    let codes = d.model.operator_codes.as_deref()?;
    let kind = |o: &fb::OperatorT| builtin_of(&codes[o.opcode_index as usize]);
    let key = |o: &fb::OperatorT| match &o.builtin_options {
        fb::BuiltinOptionsT::VarHandleOptions(v) => Some((
            v.container.clone().unwrap_or_default(),
            v.shared_name.clone().unwrap_or_default(),
        )),
        _ => None,
    };
    let out0 = |o: &fb::OperatorT| o.outputs.as_ref().and_then(|v| v.first().copied());
    let in_k = |o: &fb::OperatorT, k: usize| o.inputs.as_ref().and_then(|v| v.get(k).copied());
    let subgraphs = d.model.subgraphs.as_deref()?;
    let main = subgraphs.first()?;
    let ops = main.operators.as_deref()?;
    if !ops.iter().any(|o| kind(o) == B::VAR_HANDLE) {
        return None;
    }
    let mut init = None;
    for o in ops {
        match (kind(o), &o.builtin_options) {
            (B::CALL_ONCE, fb::BuiltinOptionsT::CallOnceOptions(c)) => {
                init = Some(c.init_subgraph_index as usize)
            }
            (B::IF | B::WHILE | B::CALL | B::CALL_ONCE, _) => return None,
            _ => {}
        }
    }
    // Initial values: the constants the init subgraph assigns.
    let mut initial: HashMap<Key, Const> = HashMap::new();
    let g = subgraphs.get(init?)?;
    let tensors = g.tensors.as_deref()?;
    let mut handles: HashMap<i32, Key> = HashMap::new();
    for o in g.operators.iter().flatten() {
        match kind(o) {
            B::VAR_HANDLE => {
                handles.insert(out0(o)?, key(o)?);
            }
            B::ASSIGN_VARIABLE => {
                let t = tensors.get(in_k(o, 1)? as usize)?;
                initial.insert(handles.get(&in_k(o, 0)?)?.clone(), tensor_const(d, t)?);
            }
            _ => return None,
        }
    }
    // The main graph in order: a read before any write is the carried state, a read after one
    // is the value written.
    let mut handles: HashMap<i32, Key> = HashMap::new();
    let mut current: HashMap<Key, i32> = HashMap::new();
    let mut carried: Vec<(Key, i32)> = Vec::new();
    let mut alias: HashMap<i32, i32> = HashMap::new();
    let mut kept = Vec::new();
    for o in ops {
        match kind(o) {
            B::VAR_HANDLE => {
                handles.insert(out0(o)?, key(o)?);
            }
            B::CALL_ONCE => {}
            B::READ_VARIABLE => {
                let k = handles.get(&in_k(o, 0)?)?.clone();
                let read = out0(o)?;
                match current.get(&k) {
                    Some(&v) => {
                        alias.insert(read, v);
                    }
                    None => {
                        current.insert(k.clone(), read);
                        carried.push((k, read));
                    }
                }
            }
            B::ASSIGN_VARIABLE => {
                let k = handles.get(&in_k(o, 0)?)?.clone();
                let v = in_k(o, 1)?;
                current.insert(k, *alias.get(&v).unwrap_or(&v));
            }
            _ => kept.push(o.clone()),
        }
    }
    let tensors = main.tensors.as_deref()?;
    let mut state = StreamState {
        inputs: vec![],
        outputs: vec![],
        initial: vec![],
    };
    let (mut new_inputs, mut new_outputs) = (main.inputs.clone()?, main.outputs.clone()?);
    let mut constants = Vec::new();
    for (k, read) in &carried {
        let t = tensors.get(usize::try_from(*read).ok()?)?;
        let c = initial.get(k)?;
        let bytes = super::static_shape(t)?
            .iter()
            .try_fold(element_bytes(t.type_)?, |n, &x| n.checked_mul(x as usize))?;
        if c.dtype != t.type_ || c.data.len() != bytes {
            return None;
        }
        let written = current[k];
        if written == *read {
            // Never written: the initial value on every run.
            constants.push((*read as usize, c.data.clone()));
            continue;
        }
        state.inputs.push(new_inputs.len());
        state.outputs.push(new_outputs.len());
        state.initial.push(c.data.clone());
        new_inputs.push(*read);
        new_outputs.push(written);
    }
    for o in &mut kept {
        for i in o.inputs.iter_mut().flatten() {
            *i = *alias.get(i).unwrap_or(i);
        }
    }
    for o in &mut new_outputs {
        *o = *alias.get(o).unwrap_or(o);
    }
    let n = carried.len();
    let main = &mut d.model.subgraphs.as_mut().unwrap()[0];
    main.operators = Some(kept);
    main.inputs = Some(new_inputs);
    main.outputs = Some(new_outputs);
    // Not `make_constant`: that drops the quantization, which an int8 state keeps.
    for (index, data) in constants {
        d.buffers.push(Some(Bytes::from(data)));
        d.model
            .buffers
            .get_or_insert_with(Vec::new)
            .push(fb::BufferT::default());
        d.model.subgraphs.as_mut().unwrap()[0]
            .tensors
            .as_mut()
            .unwrap()[index]
            .buffer = (d.buffers.len() - 1) as u32;
    }
    // The init subgraph (and any other) is no longer called.
    d.model.subgraphs.as_mut().unwrap().truncate(1);
    d.model.signature_defs = None;
    *report
        .rewrites
        .entry("resource variables as carried state inputs/outputs".into())
        .or_insert(0) += n;
    Some(state)
}

fn element_bytes(t: fb::TensorType) -> Option<usize> {
    use fb::TensorType as T;
    Some(match t {
        T::INT8 | T::UINT8 | T::BOOL => 1,
        T::INT16 | T::FLOAT16 => 2,
        T::INT32 | T::FLOAT32 => 4,
        T::INT64 | T::FLOAT64 => 8,
        _ => return None,
    })
}
