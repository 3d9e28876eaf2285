//! Magnitude pruning, the method: weight magnitudes in every stored type ([`values`]), exact
//! deterministic selection (per tensor, pooled, LAMP, N:M; [`select`]) and the float32 recipes
//! the writers apply ([`recipe`]). Imports only the model core; the pipeline decides amounts.
//!
//! Layer: methods (imports its own layer and the ones below; see ARCHITECTURE.md).

pub mod recipe;
pub mod select;
pub mod values;

/// Elements handled per parallel task (and per chunk of a chunked cut).
pub const CHUNK: usize = 1 << 16;

/// Axes of a weight for its consumer: (output-channel axis, input-channel axis).
pub fn layout(op: &str, input: usize, trans_b: bool, rank: usize) -> (usize, Option<usize>) {
    let last = rank - 1;
    let before = rank - 2;
    match op {
        "Conv" | "ConvInteger" | "QLinearConv" => (0, Some(1)),
        "ConvTranspose" => (1, Some(0)),
        "CONV_2D" | "TRANSPOSE_CONV" => (0, Some(last)),
        "CONV_3D" => (last, Some(before)),
        // Depthwise kernels have no input-channel reduction.
        "DEPTHWISE_CONV_2D" => (last, None),
        "FULLY_CONNECTED" => (0, Some(1)),
        "LSTM" | "GRU" | "RNN" => (before, Some(last)),
        "UNIDIRECTIONAL_SEQUENCE_LSTM" | "BIDIRECTIONAL_SEQUENCE_LSTM" => (0, Some(last)),
        "Gemm" if input == 1 && trans_b => (0, Some(1)),
        "Gemm" if input == 1 => (1, Some(0)),
        "BATCH_MATMUL" if input == 1 && trans_b => (before, Some(last)),
        "MatMul" | "MatMulInteger" | "BATCH_MATMUL" if input == 1 => (last, Some(before)),
        "QLinearMatMul" if input == 3 => (last, Some(before)),
        // A constant first operand [.., M, K].
        _ => (before, Some(last)),
    }
}
