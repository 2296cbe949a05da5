//! The CPU backend: the f32 reference of every op, and a usable engine on a laptop or CI.
//!
//! Each op is a plain function in its own module with the tensor layout stated; this `Backend` impl
//! only checks lengths and forwards to them. CUDA kernel tests call these functions directly.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod kv_write;
pub mod matmul;
pub mod moe;
pub mod norm;
pub mod rope;

use super::{AttentionSpec, Backend, BatchMeta, KvGeometry, MoeRouting, MoeScratch};
use crate::error::{Error, Result};
use crate::model::tensor_store::HostTensor;

/// The CPU backend. Threads come from rayon's global pool (`--threads`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Backend {
            backend: "cpu",
            msg: what(),
        })
    }
}

fn need(buf: &[f32], len: usize, name: &str) -> Result<()> {
    super::check_len("cpu", buf.len(), len, name)
}

/// Check RoPE's buffers and positions against a cos/sin table of rows `rotary_dim` wide (even, at
/// most head_dim); returns the QKV row length.
fn check_rope(
    qkv: &[f32],
    cos_sin: &[f32],
    meta: &BatchMeta,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
) -> Result<usize> {
    let row_len = (num_heads + 2 * num_kv_heads) * head_dim;
    need(qkv, meta.num_tokens() * row_len, "qkv")?;
    let max =
        crate::backend::rope_table_rows(cos_sin.len(), head_dim, rotary_dim).map_err(|msg| {
            Error::Backend {
                backend: "cpu",
                msg,
            }
        })?;
    check(meta.positions.iter().all(|&p| (p as usize) < max), || {
        format!("a position exceeds the RoPE table of {max} positions")
    })?;
    Ok(row_len)
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;
    type Meta = BatchMeta;
    /// The CPU records nothing: every step runs its ops (`can_capture` is false).
    type Graph = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, t: &HostTensor) -> Result<Vec<f32>> {
        Ok(t.data.clone())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        let bytes = len.saturating_mul(4) as u64;
        // Large buffers are the KV pool and the activations of a big step: check them against the
        // host's available memory, and fail with an error rather than abort if the allocator says
        // no (vec! aborts the process).
        let what = || {
            format!(
                "a CPU buffer of {len} f32 (the KV pool is sized by --kv-memory or --kv-blocks, \
                 activations by --max-num-batched-tokens)"
            )
        };
        if bytes >= 1 << 28 {
            crate::telemetry::host::check_host_memory(bytes, &what())?;
        }
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|e| Error::Invalid(format!("{}: {e}", what())))?;
        v.resize(len, 0.0);
        Ok(v)
    }

    fn download(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        need(buf, len, "download")?;
        Ok(buf[..len].to_vec())
    }

    fn prepare(&self, meta: &BatchMeta, geom: &KvGeometry) -> Result<BatchMeta> {
        meta.validate(geom).map_err(|msg| Error::Backend {
            backend: "cpu",
            msg: format!("bad batch metadata: {msg}"),
        })?;
        Ok(meta.clone())
    }

    fn embedding(
        &self,
        out: &mut Vec<f32>,
        table: &Vec<f32>,
        pos_table: Option<&Vec<f32>>,
        meta: &BatchMeta,
        hidden: usize,
    ) -> Result<()> {
        need(out, meta.num_tokens() * hidden, "out")?;
        let vocab = table.len() / hidden;
        if let Some(&bad) = meta.token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if let Some(pt) = pos_table {
            let max = pt.len() / hidden;
            check(meta.positions.iter().all(|&p| (p as usize) < max), || {
                format!("a position exceeds the {max} learned positions")
            })?;
        }
        embedding::embedding(
            out,
            table,
            pos_table.map(|v| v.as_slice()),
            &meta.token_ids,
            &meta.positions,
            hidden,
        );
        Ok(())
    }

    fn layernorm(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        bias: &Vec<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, rows * cols, "out")?;
        need(x, rows * cols, "x")?;
        norm::layernorm(out, x, weight, bias, rows, cols, eps);
        Ok(())
    }

    fn rmsnorm(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, rows * cols, "out")?;
        need(x, rows * cols, "x")?;
        norm::rmsnorm(out, x, weight, rows, cols, eps);
        Ok(())
    }

    fn qk_rmsnorm(
        &self,
        qkv: &mut Vec<f32>,
        q_norm: &Vec<f32>,
        k_norm: &Vec<f32>,
        rows: usize,
        q_cols: usize,
        k_cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(qkv, rows * (q_cols + 2 * k_cols), "qkv")?;
        need(q_norm, q_cols, "q_norm")?;
        need(k_norm, k_cols, "k_norm")?;
        norm::qk_rmsnorm(qkv, q_norm, k_norm, rows, q_cols, k_cols, eps);
        Ok(())
    }

    fn add_rmsnorm(
        &self,
        residual: &mut Vec<f32>,
        delta: &Vec<f32>,
        out: &mut Vec<f32>,
        weight: &Vec<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        need(out, rows * cols, "out")?;
        need(residual, rows * cols, "residual")?;
        need(delta, rows * cols, "delta")?;
        norm::add_rmsnorm(residual, delta, out, weight, rows, cols, eps);
        Ok(())
    }

    fn add_inplace(&self, x: &mut Vec<f32>, y: &Vec<f32>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        need(y, len, "y")?;
        norm::add_inplace(&mut x[..len], &y[..len]);
        Ok(())
    }

    fn linear(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        need(out, m * n, "out")?;
        need(x, m * k, "x")?;
        need(weight, n * k, "weight")?;
        matmul::linear(out, x, weight, bias.map(|b| b.as_slice()), m, n, k);
        Ok(())
    }

    fn rope(
        &self,
        qkv: &mut Vec<f32>,
        cos_sin: &Vec<f32>,
        meta: &BatchMeta,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        rotary_dim: usize,
    ) -> Result<()> {
        let row_len = check_rope(
            qkv,
            cos_sin,
            meta,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
        )?;
        rope::rope(
            qkv,
            row_len,
            cos_sin,
            &meta.positions,
            num_heads + num_kv_heads,
            head_dim,
            rotary_dim,
        );
        Ok(())
    }

    fn qk_norm_rope(
        &self,
        qkv: &mut Vec<f32>,
        cos_sin: &Vec<f32>,
        q_norm: &Vec<f32>,
        k_norm: &Vec<f32>,
        meta: &BatchMeta,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        eps: f32,
    ) -> Result<()> {
        let row_len = check_rope(
            qkv,
            cos_sin,
            meta,
            num_heads,
            num_kv_heads,
            head_dim,
            head_dim,
        )?;
        need(q_norm, head_dim, "q_norm")?;
        need(k_norm, head_dim, "k_norm")?;
        rope::qk_norm_rope(
            qkv,
            row_len,
            cos_sin,
            &meta.positions,
            &q_norm[..head_dim],
            &k_norm[..head_dim],
            num_heads,
            num_heads + num_kv_heads,
            head_dim,
            eps,
        );
        Ok(())
    }

    fn write_kv(
        &self,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        qkv: &Vec<f32>,
        meta: &BatchMeta,
        geom: &KvGeometry,
        num_heads: usize,
        kv_group: usize,
    ) -> Result<()> {
        need(k_cache, geom.layer_len(), "k_cache")?;
        need(v_cache, geom.layer_len(), "v_cache")?;
        let q_size = num_heads * geom.head_dim;
        need(
            qkv,
            meta.num_tokens() * (q_size + 2 * geom.slot_len()),
            "qkv",
        )?;
        super::check_kv_group("cpu", kv_group, meta.num_kv_groups)?;
        let slots = meta.slot_mapping_of(kv_group);
        kv_write::write_kv(k_cache, v_cache, qkv, slots, geom, q_size);
        Ok(())
    }

    fn attention(
        &self,
        out: &mut Vec<f32>,
        qkv: &Vec<f32>,
        k_cache: &Vec<f32>,
        v_cache: &Vec<f32>,
        meta: &BatchMeta,
        geom: &KvGeometry,
        spec: &AttentionSpec,
    ) -> Result<()> {
        let num_heads = spec.num_heads;
        let q_size = num_heads * geom.head_dim;
        need(out, meta.num_tokens() * q_size, "out")?;
        need(
            qkv,
            meta.num_tokens() * (q_size + 2 * geom.slot_len()),
            "qkv",
        )?;
        need(k_cache, geom.layer_len(), "k_cache")?;
        need(v_cache, geom.layer_len(), "v_cache")?;
        check(num_heads % geom.num_kv_heads == 0, || {
            format!(
                "{num_heads} heads not divisible by {} KV heads",
                geom.num_kv_heads
            )
        })?;
        spec.check("cpu")?;
        super::check_kv_group("cpu", spec.kv_group, meta.num_kv_groups)?;
        attention::paged_attention(out, qkv, k_cache, v_cache, meta, geom, spec);
        Ok(())
    }

    fn softcap_inplace(&self, x: &mut Vec<f32>, cap: f32, len: usize) -> Result<()> {
        need(x, len, "x")?;
        check(cap.is_finite() && cap > 0.0, || {
            format!("soft-cap {cap} (must be positive and finite)")
        })?;
        activation::softcap(&mut x[..len], cap);
        Ok(())
    }

    fn gelu_new(&self, x: &mut Vec<f32>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        activation::gelu_new(&mut x[..len]);
        Ok(())
    }

    fn gelu_erf(&self, x: &mut Vec<f32>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        activation::gelu_erf(&mut x[..len]);
        Ok(())
    }

    fn relu(&self, x: &mut Vec<f32>, len: usize) -> Result<()> {
        need(x, len, "x")?;
        activation::relu(&mut x[..len]);
        Ok(())
    }

    fn silu_mul(&self, out: &mut Vec<f32>, x: &Vec<f32>, rows: usize, inter: usize) -> Result<()> {
        need(out, rows * inter, "out")?;
        need(x, rows * 2 * inter, "x")?;
        activation::silu_mul(out, x, rows, inter);
        Ok(())
    }

    fn gelu_tanh_mul(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        rows: usize,
        inter: usize,
    ) -> Result<()> {
        need(out, rows * inter, "out")?;
        need(x, rows * 2 * inter, "x")?;
        activation::gelu_tanh_mul(out, x, rows, inter);
        Ok(())
    }

    fn moe_experts(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        gate_up: &Vec<f32>,
        down: &Vec<f32>,
        routing: &MoeRouting,
        scratch: &mut MoeScratch<Vec<f32>>,
        hidden: usize,
        inter: usize,
    ) -> Result<()> {
        let lens = [out, x, gate_up, down].map(|b| b.len());
        let scratch_lens = scratch.each(|b| b.len());
        routing.check_buffers("cpu", lens, scratch_lens, hidden, inter)?;
        moe::moe_experts(
            out,
            x,
            gate_up,
            down,
            routing,
            scratch,
            hidden,
            inter,
            &|_| {},
        );
        Ok(())
    }

    fn scale_inplace(&self, x: &mut Vec<f32>, scale: f32, len: usize) -> Result<()> {
        need(x, len, "x")?;
        for v in &mut x[..len] {
            *v *= scale;
        }
        Ok(())
    }

    fn gather_logit_rows(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        meta: &BatchMeta,
        cols: usize,
    ) -> Result<()> {
        need(out, meta.num_logits() * cols, "out")?;
        need(x, meta.num_tokens() * cols, "x")?;
        embedding::gather_rows(out, x, &meta.logits_indices, cols);
        Ok(())
    }
}
