//! What stage 1 reads from the TPM before it mounts a root: the responses
//! to NV_ReadPublic and NV_Read of the anti-rollback index (and the update
//! client's NV_SetBits answer). A TPM, or whatever sits on its bus, may
//! answer anything: a typed error, never a panic, never an out-of-bounds
//! read, and a minimum only from a well-formed bits index of ours.
#![no_main]
use fluxnode_lowlevel::tpmnv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(public) = tpmnv::parse_nv_read_public_response(data) {
        let _ = public.check_ours();
        let _ = public.written();
    }
    if let Ok(bytes) = tpmnv::parse_nv_read_response(data) {
        if bytes.len() == 8 {
            let bits = u64::from_be_bytes(bytes.try_into().unwrap_or([0; 8]));
            assert!(tpmnv::min_security_version_of(bits) <= 64);
        }
    }
    let _ = tpmnv::parse_nv_set_bits_response(data);
});
