//! Every (call, state) cell of the state tables, against results written out here from
//! vdi-spec.md §5 and §6, not computed by the code under test.

use vdi_core::{
    AbortReason, ClientDeviceMachine, ClientSetMachine, ClientSetState as C, CommandCode,
    CompletionCode, Delivery, DeviceState as D, Error, HResult, ServerCall, ServerDeviceMachine,
    ServerSetMachine, ServerSetState as S,
};

const P: HResult = HResult::VD_E_PROTOCOL;
const A: HResult = HResult::VD_E_ABORT;
const CL: HResult = HResult::VD_E_CLOSE;

/// A client machine driven into `state` through legal calls (one device).
fn client_in(state: C) -> ClientSetMachine {
    let mut m = ClientSetMachine::new();
    if state == C::DoesNotExist {
        return m;
    }
    m.create(1).unwrap();
    match state {
        C::Configurable => {}
        C::Aborted => m.signal_abort(AbortReason::Signalled).unwrap(),
        _ => {
            m.configured();
            if state != C::Initializing {
                m.open_device(0, false, false).unwrap();
                if state == C::NormallyTerminated {
                    m.device_closed(0);
                }
            }
        }
    }
    assert_eq!(m.state(), state, "setup");
    m
}

#[derive(Clone, Copy, Debug)]
enum ClientCall {
    Create,
    GetConfiguration,
    OpenDevice,
    GetCommand,
    CompleteCommand,
    SignalAbort,
    Close,
}

fn client_apply(m: &mut ClientSetMachine, call: ClientCall) -> Result<(), Error> {
    match call {
        ClientCall::Create => m.create(1),
        ClientCall::GetConfiguration => m.check_get_configuration().map(|()| m.configured()),
        ClientCall::OpenDevice => m.open_device(0, false, false),
        ClientCall::GetCommand => m.check_get_command(0),
        ClientCall::CompleteCommand => m.check_complete_command(0),
        ClientCall::SignalAbort => m.signal_abort(AbortReason::Signalled),
        ClientCall::Close => m.close(false).result,
    }
}

/// The client table of vdi-spec.md §6: `Ok(next state)` or `Err(code)`; the state does not
/// change on an error. Columns: DNE, Configurable, Initializing, Active, NormallyTerminated,
/// Abort.
#[test]
fn client_table_every_cell() {
    use ClientCall::*;
    let table: [(ClientCall, [Result<C, HResult>; 6]); 7] = [
        (
            Create,
            [Ok(C::Configurable), Err(P), Err(P), Err(P), Err(P), Err(P)],
        ),
        (
            GetConfiguration,
            [
                Err(P),
                Ok(C::Initializing),
                Ok(C::Initializing),
                Ok(C::Active),
                Ok(C::NormallyTerminated),
                Err(A),
            ],
        ),
        // In Active, device 0 is open already: PROTOCOL ("this device is already open").
        (
            OpenDevice,
            [Err(P), Err(P), Ok(C::Active), Err(P), Err(P), Err(A)],
        ),
        // NormallyTerminated: device 0 returned VD_E_CLOSE, and answers it again (the reading
        // documented on `check_get_command`; a device that did not end gets PROTOCOL there,
        // see `client_get_command_after_the_end`).
        (
            GetCommand,
            [Err(P), Err(P), Err(P), Ok(C::Active), Err(CL), Err(A)],
        ),
        (
            CompleteCommand,
            [Err(P), Err(P), Err(P), Ok(C::Active), Err(P), Err(A)],
        ),
        (
            SignalAbort,
            [
                Err(P),
                Ok(C::Aborted),
                Ok(C::Aborted),
                Ok(C::Aborted),
                Ok(C::Aborted),
                Ok(C::Aborted),
            ],
        ),
        (
            Close,
            [
                Err(P),
                Ok(C::DoesNotExist),
                Ok(C::DoesNotExist),
                Ok(C::DoesNotExist),
                Ok(C::DoesNotExist),
                Ok(C::DoesNotExist),
            ],
        ),
    ];
    let mut cells = 0;
    for (call, row) in table {
        for (state, expected) in C::ALL.into_iter().zip(row) {
            let mut m = client_in(state);
            let got = client_apply(&mut m, call);
            match expected {
                Ok(next) => {
                    assert_eq!(got, Ok(()), "{call:?} in {state:?}");
                    assert_eq!(m.state(), next, "{call:?} in {state:?}: next state");
                }
                Err(code) => {
                    let e = got.expect_err(&format!("{call:?} in {state:?} must fail"));
                    assert_eq!(e.hresult(), code, "{call:?} in {state:?}: {e}");
                    assert_eq!(
                        m.state(),
                        state,
                        "{call:?} in {state:?}: state must not change"
                    );
                }
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 42);
}

#[test]
fn client_get_command_close_ends_the_set_after_the_last_device() {
    let mut m = ClientSetMachine::new();
    m.create(2).unwrap();
    m.configured();
    m.open_device(0, false, false).unwrap();
    m.open_device(1, false, false).unwrap();
    m.device_closed(0);
    assert_eq!(m.state(), C::Active);
    assert_eq!(m.check_get_command(1), Ok(()));
    m.device_closed(1);
    assert_eq!(m.state(), C::NormallyTerminated);
}

/// After VD_E_CLOSE: the device that ended answers VD_E_CLOSE again, while the set is Active, once
/// it is NormallyTerminated, and after an abort; a device this process did not open gets
/// PROTOCOL once the set has terminated; Close forgets it all.
#[test]
fn client_get_command_after_the_end() {
    let mut m = ClientSetMachine::new();
    m.create(3).unwrap();
    m.configured();
    m.open_device(0, false, false).unwrap();
    m.open_device(1, false, false).unwrap();
    m.device_closed(0);
    assert_eq!(m.state(), C::Active);
    assert!(m.has_ended(0) && !m.has_ended(1));
    assert_eq!(m.check_get_command(0), Err(Error::Closed));
    assert_eq!(m.check_get_command(1), Ok(()));
    m.device_closed(1);
    assert_eq!(m.state(), C::NormallyTerminated);
    for i in [0, 1] {
        assert_eq!(m.check_get_command(i), Err(Error::Closed), "device {i}");
    }
    // Device 2 (opened by no one here) never ended.
    assert_eq!(m.check_get_command(2).unwrap_err().hresult(), P);
    // CompleteCommand follows the table: nothing is outstanding on an ended device.
    assert_eq!(m.check_complete_command(0).unwrap_err().hresult(), P);
    m.signal_abort(AbortReason::Signalled).unwrap();
    assert_eq!(m.check_get_command(0), Err(Error::Closed));
    assert_eq!(m.check_get_command(2).unwrap_err().hresult(), A);
    assert!(m.close(false).result.is_ok());
    assert!(!m.has_ended(0));
    assert_eq!(m.check_get_command(0).unwrap_err().hresult(), P);
}

/// GetBufferHandle and MapBufferHandle: PROTOCOL once the set is not open (vdi-spec.md §4), in
/// every other state allowed (the command or handle decides).
#[test]
fn client_buffer_handles_need_an_open_set() {
    use vdi_core::Call;
    for state in C::ALL {
        let m = client_in(state);
        for call in [Call::GetBufferHandle, Call::MapBufferHandle] {
            let got = m.check_buffer_handle(call);
            if state == C::DoesNotExist {
                assert_eq!(got.unwrap_err().hresult(), P, "{call:?} in {state:?}");
            } else {
                assert_eq!(got, Ok(()), "{call:?} in {state:?}");
            }
        }
    }
    let mut m = client_in(C::Active);
    assert!(m.close(true).abort_peer);
    assert_eq!(
        m.check_buffer_handle(Call::GetBufferHandle),
        Err(Error::Protocol(vdi_core::ProtocolReason::WrongState(
            Call::GetBufferHandle
        )))
    );
}

#[test]
fn client_open_device_details() {
    let mut m = ClientSetMachine::new();
    m.create(2).unwrap();
    m.configured();
    assert_eq!(
        m.open_device(2, false, false).unwrap_err().hresult(),
        HResult::VD_E_INVALID
    );
    assert_eq!(
        m.open_device(0, true, false).unwrap_err().hresult(),
        HResult::VD_E_OPEN
    );
    assert_eq!(
        m.open_device(0, false, true).unwrap_err().hresult(),
        HResult::VD_E_PROTOCOL
    );
    m.open_device(0, false, false).unwrap();
    // A second device while Active.
    m.open_device(1, false, false).unwrap();
    assert_eq!(
        m.open_device(1, true, true).unwrap_err().hresult(),
        HResult::VD_E_OPEN
    );
    assert_eq!(m.check_get_command(1), Ok(()));
}

#[test]
fn client_close_with_open_devices_answers_open_and_aborts() {
    let mut m = client_in(C::Active);
    let action = m.close(true);
    assert_eq!(action.result.unwrap_err().hresult(), HResult::VD_E_OPEN);
    assert!(action.abort_peer);
    assert_eq!(m.state(), C::DoesNotExist);

    let mut m = client_in(C::NormallyTerminated);
    let action = m.close(false);
    assert_eq!(action.result, Ok(()));
    assert!(!action.abort_peer, "a normal end needs no abort");

    let mut m = client_in(C::Configurable);
    assert!(
        m.close(false).abort_peer,
        "closing before the end aborts the server"
    );

    // After Close, the interface can create a new set.
    assert_eq!(m.create(1), Ok(()));
}

#[test]
fn client_abort_keeps_reason() {
    let mut m = client_in(C::Active);
    m.signal_abort(AbortReason::PeerExited).unwrap();
    assert_eq!(
        m.check_get_command(0),
        Err(Error::Aborted(AbortReason::PeerExited))
    );
    // A second abort keeps the first reason.
    m.signal_abort(AbortReason::Signalled).unwrap();
    assert_eq!(m.abort_reason(), AbortReason::PeerExited);
}

#[test]
fn secondary_starts_initializing() {
    let mut m = ClientSetMachine::secondary(4);
    assert_eq!(m.state(), C::Initializing);
    m.check_get_configuration().unwrap();
    m.open_device(3, false, false).unwrap();
    assert_eq!(m.check_get_command(3), Ok(()));
    assert_eq!(
        m.check_get_command(2).unwrap_err().hresult(),
        HResult::VD_E_PROTOCOL
    );
}

fn server_in(state: S) -> ServerSetMachine {
    let mut m = ServerSetMachine::new();
    let path: &[ServerCall] = match state {
        S::DoesNotExist => &[],
        S::Connected => &[ServerCall::Open],
        S::Configurable => &[ServerCall::Open, ServerCall::BeginConfiguration],
        S::Initializing => &[
            ServerCall::Open,
            ServerCall::BeginConfiguration,
            ServerCall::EndConfiguration,
        ],
        S::Active => &[
            ServerCall::Open,
            ServerCall::BeginConfiguration,
            ServerCall::EndConfiguration,
            ServerCall::OpenDevice,
        ],
        S::Aborted => &[ServerCall::Open, ServerCall::SignalAbort],
    };
    for &call in path {
        m.apply(call).unwrap();
    }
    assert_eq!(m.state(), state, "setup");
    m
}

/// The server table (vdi-spec.md §5, as documented on `ServerSetMachine`). Columns:
/// DNE, Connected, Configurable, Initializing, Active, Aborted.
#[test]
fn server_table_every_cell() {
    use ServerCall::*;
    let dne = S::DoesNotExist;
    let table: [(ServerCall, [Result<S, HResult>; 6]); 11] = [
        (
            Open,
            [Ok(S::Connected), Err(P), Err(P), Err(P), Err(P), Err(P)],
        ),
        (
            GetConfiguration,
            [
                Err(P),
                Ok(S::Connected),
                Ok(S::Configurable),
                Ok(S::Initializing),
                Ok(S::Active),
                Err(A),
            ],
        ),
        (
            BeginConfiguration,
            [Err(P), Ok(S::Configurable), Err(P), Err(P), Err(P), Err(A)],
        ),
        (
            RequestBuffers,
            [
                Err(P),
                Err(P),
                Ok(S::Configurable),
                Ok(S::Initializing),
                Ok(S::Active),
                Err(A),
            ],
        ),
        (
            QueryAvailableBuffers,
            [
                Err(P),
                Err(P),
                Err(P),
                Ok(S::Initializing),
                Ok(S::Active),
                Err(A),
            ],
        ),
        (
            EndConfiguration,
            [Err(P), Err(P), Ok(S::Initializing), Err(P), Err(P), Err(A)],
        ),
        (
            OpenDevice,
            [
                Err(P),
                Err(P),
                Ok(S::Configurable),
                Ok(S::Active),
                Ok(S::Active),
                Err(A),
            ],
        ),
        (
            AllocateBuffer,
            [
                Err(P),
                Err(P),
                Err(P),
                Ok(S::Initializing),
                Ok(S::Active),
                Err(A),
            ],
        ),
        (
            FreeBuffer,
            [
                Err(P),
                Err(P),
                Err(P),
                Ok(S::Initializing),
                Ok(S::Active),
                Ok(S::Aborted),
            ],
        ),
        (
            SignalAbort,
            [
                Err(P),
                Ok(S::Aborted),
                Ok(S::Aborted),
                Ok(S::Aborted),
                Ok(S::Aborted),
                Ok(S::Aborted),
            ],
        ),
        (Close, [Err(P), Ok(dne), Ok(dne), Ok(dne), Ok(dne), Ok(dne)]),
    ];
    assert_eq!(table.len(), ServerCall::ALL.len());
    let mut cells = 0;
    for (call, row) in table {
        for (state, expected) in S::ALL.into_iter().zip(row) {
            let mut m = server_in(state);
            let got = m.apply(call);
            match expected {
                Ok(next) => {
                    assert_eq!(got, Ok(next), "{call:?} in {state:?}");
                    assert_eq!(m.state(), next, "{call:?} in {state:?}");
                }
                Err(code) => {
                    let e = got.expect_err(&format!("{call:?} in {state:?} must fail"));
                    assert_eq!(e.hresult(), code, "{call:?} in {state:?}: {e}");
                    assert_eq!(
                        m.state(),
                        state,
                        "{call:?} in {state:?}: state must not change"
                    );
                }
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 66);
}

#[test]
fn server_devices_opened_while_configuring() {
    let mut m = server_in(S::Configurable);
    m.apply(ServerCall::OpenDevice).unwrap();
    assert_eq!(m.state(), S::Configurable);
    assert_eq!(m.apply(ServerCall::EndConfiguration), Ok(S::Active));
    let action = m.close(false);
    assert_eq!(action.result, Ok(()));
    assert!(!action.abort_peer, "the devices ran and were closed");
}

#[test]
fn server_close_rules() {
    let mut m = server_in(S::Active);
    let action = m.close(true);
    assert_eq!(action.result.unwrap_err().hresult(), HResult::VD_E_PROTOCOL);
    assert!(action.abort_peer, "closing with devices open aborts");
    assert_eq!(m.state(), S::DoesNotExist);

    let mut m = server_in(S::Active);
    let action = m.close(false);
    assert_eq!(action.result, Ok(()));
    assert!(!action.abort_peer, "every device was closed: a normal end");

    let mut m = server_in(S::Configurable);
    assert!(
        m.close(false).abort_peer,
        "closing before any device: the client must not hang"
    );

    let mut m = server_in(S::DoesNotExist);
    assert_eq!(
        m.close(false).result.unwrap_err().hresult(),
        HResult::VD_E_PROTOCOL
    );
}

fn device_in(state: D) -> ServerDeviceMachine {
    let mut m = ServerDeviceMachine::new(2);
    match state {
        D::Active => {}
        D::IoError => {
            m.send(CommandCode::WRITE).unwrap();
            m.completed(CommandCode::WRITE, CompletionCode::DISK_FULL);
        }
        D::Closed => m.close().unwrap(),
        D::Aborted => m.abort(AbortReason::Signalled),
    }
    assert_eq!(m.state(), state, "setup");
    m
}

#[derive(Clone, Copy, Debug)]
enum DevEvent {
    SendWrite,
    SendClearError,
    WriteOk,
    WriteFailed,
    ClearErrorOk,
    CloseDevice,
    Abort,
}

/// The device transitions (vdi-spec.md §6, per-device IO-ERROR state). Columns: Active,
/// IoError, Closed, Aborted. `Err(code)` leaves the state unchanged.
#[test]
fn device_table_every_cell() {
    use DevEvent::*;
    let io = CompletionCode::IO_DEVICE.to_hresult();
    assert_eq!(io.0 as u32, 0x8007_045D);
    let table: [(DevEvent, [Result<D, HResult>; 4]); 7] = [
        (SendWrite, [Ok(D::Active), Err(io), Err(P), Err(A)]),
        (
            SendClearError,
            [Ok(D::Active), Ok(D::IoError), Err(P), Err(A)],
        ),
        (
            WriteOk,
            [Ok(D::Active), Ok(D::IoError), Ok(D::Closed), Ok(D::Aborted)],
        ),
        (
            WriteFailed,
            [
                Ok(D::IoError),
                Ok(D::IoError),
                Ok(D::Closed),
                Ok(D::Aborted),
            ],
        ),
        (
            ClearErrorOk,
            [Ok(D::Active), Ok(D::Active), Ok(D::Closed), Ok(D::Aborted)],
        ),
        (CloseDevice, [Ok(D::Closed), Ok(D::Closed), Err(P), Err(A)]),
        (
            Abort,
            [
                Ok(D::Aborted),
                Ok(D::Aborted),
                Ok(D::Aborted),
                Ok(D::Aborted),
            ],
        ),
    ];
    let mut cells = 0;
    for (event, row) in table {
        for (state, expected) in D::ALL.into_iter().zip(row) {
            let mut m = device_in(state);
            let got = match event {
                SendWrite => m.send(CommandCode::WRITE),
                SendClearError => m.send(CommandCode::CLEAR_ERROR),
                WriteOk => {
                    m.completed(CommandCode::WRITE, CompletionCode::SUCCESS);
                    Ok(())
                }
                WriteFailed => {
                    m.completed(CommandCode::WRITE, CompletionCode::DISK_FULL);
                    Ok(())
                }
                ClearErrorOk => {
                    m.completed(CommandCode::CLEAR_ERROR, CompletionCode::SUCCESS);
                    Ok(())
                }
                CloseDevice => m.close(),
                Abort => {
                    m.abort(AbortReason::Signalled);
                    Ok(())
                }
            };
            match expected {
                Ok(next) => {
                    assert_eq!(got, Ok(()), "{event:?} in {state:?}");
                    assert_eq!(m.state(), next, "{event:?} in {state:?}");
                }
                Err(code) => {
                    let e = got.expect_err(&format!("{event:?} in {state:?} must fail"));
                    assert_eq!(e.hresult(), code, "{event:?} in {state:?}");
                    assert_eq!(m.state(), state, "{event:?} in {state:?}");
                }
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 28);
}

#[test]
fn device_queue_depth_gives_busy() {
    let mut m = ServerDeviceMachine::new(2);
    m.send(CommandCode::WRITE).unwrap();
    m.send(CommandCode::WRITE).unwrap();
    assert_eq!(m.send(CommandCode::WRITE), Err(Error::Busy));
    assert_eq!(Error::Busy.hresult(), HResult::VD_E_BUSY);
    m.completed(CommandCode::WRITE, CompletionCode::SUCCESS);
    assert_eq!(m.send(CommandCode::WRITE), Ok(()));
}

#[test]
fn eof_and_media_warnings_are_not_device_errors() {
    for code in [
        CompletionCode::SUCCESS,
        CompletionCode::HANDLE_EOF,
        CompletionCode::NO_DATA_DETECTED,
        CompletionCode::FILEMARK_DETECTED,
        CompletionCode::END_OF_MEDIA,
    ] {
        let mut m = ServerDeviceMachine::new(2);
        m.send(CommandCode::READ).unwrap();
        m.completed(CommandCode::READ, code);
        assert_eq!(m.state(), D::Active, "{code:?}");
    }
    for code in [
        CompletionCode::NOT_SUPPORTED,
        CompletionCode::DISK_FULL,
        CompletionCode::OPERATION_ABORTED,
        CompletionCode::IO_DEVICE,
        CompletionCode(12345),
    ] {
        let mut m = ServerDeviceMachine::new(2);
        m.send(CommandCode::WRITE).unwrap();
        m.completed(CommandCode::WRITE, code);
        assert_eq!(m.state(), D::IoError, "{code:?}");
    }
}

/// The client side of IO-ERROR: queued commands fail with 1117 unseen, ClearError waits for the
/// commands outstanding at the error, and a successful ClearError resumes delivery.
#[test]
fn client_device_io_error_delivery() {
    let mut d = ClientDeviceMachine::new();
    assert_eq!(d.on_command(CommandCode::WRITE), Delivery::Deliver);
    assert_eq!(d.on_command(CommandCode::WRITE), Delivery::Deliver);
    assert_eq!(d.on_command(CommandCode::WRITE), Delivery::Deliver);
    d.completed(CommandCode::WRITE, CompletionCode::DISK_FULL);
    assert!(d.is_io_error());
    assert_eq!(d.outstanding(), 2);
    assert_eq!(d.on_command(CommandCode::WRITE), Delivery::FailIoDevice);
    assert_eq!(d.on_command(CommandCode::FLUSH), Delivery::FailIoDevice);
    assert_eq!(d.on_command(CommandCode::CLEAR_ERROR), Delivery::Hold);
    assert!(!d.take_held(), "two commands still outstanding");
    d.completed(CommandCode::WRITE, CompletionCode::SUCCESS);
    assert!(!d.take_held(), "one command still outstanding");
    d.completed(CommandCode::WRITE, CompletionCode::SUCCESS);
    assert!(d.is_io_error(), "successes after the error do not clear it");
    assert!(d.take_held());
    assert!(!d.take_held(), "delivered once");
    d.completed(CommandCode::CLEAR_ERROR, CompletionCode::SUCCESS);
    assert!(!d.is_io_error());
    assert_eq!(d.on_command(CommandCode::WRITE), Delivery::Deliver);

    // With nothing outstanding, ClearError is delivered at once.
    let mut d = ClientDeviceMachine::new();
    d.on_command(CommandCode::WRITE);
    d.completed(CommandCode::WRITE, CompletionCode::NOT_SUPPORTED);
    assert_eq!(d.on_command(CommandCode::CLEAR_ERROR), Delivery::Deliver);
}
