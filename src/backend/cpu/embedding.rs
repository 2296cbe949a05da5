//! Token embedding lookup, plus GPT-2's learned absolute positions.

/// out[t] = table[ids[t]] (+ pos_table[positions[t]]).
/// out: [num_tokens, hidden]; table: [vocab, hidden]; pos_table: [max_context, hidden]
pub fn embedding(
    out: &mut [f32],
    table: &[f32],
    pos_table: Option<&[f32]>,
    ids: &[u32],
    positions: &[u32],
    hidden: usize,
) {
    for (t, &id) in ids.iter().enumerate() {
        let o = &mut out[t * hidden..(t + 1) * hidden];
        let id = id as usize;
        o.copy_from_slice(&table[id * hidden..(id + 1) * hidden]);
        if let Some(pt) = pos_table {
            let p = positions[t] as usize;
            for (a, b) in o.iter_mut().zip(&pt[p * hidden..(p + 1) * hidden]) {
                *a += b;
            }
        }
    }
}

/// out[i] = x[indices[i]]. out: [indices.len(), cols]; x: [rows, cols]
pub fn gather_rows(out: &mut [f32], x: &[f32], indices: &[u32], cols: usize) {
    for (i, &r) in indices.iter().enumerate() {
        let r = r as usize;
        out[i * cols..(i + 1) * cols].copy_from_slice(&x[r * cols..(r + 1) * cols]);
    }
}
