//! `DllRegisterServer` and `DllUnregisterServer`: the class's registry keys, and the refusal
//! to replace another DLL's registration (Microsoft's `sqlvdi.dll` on a machine with SQL
//! Server).

use std::{any::Any, ffi::c_void, io::Write, ptr};

use vdi_core::HResult;
use vdi_win::raw::CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET;
use windows_sys::Win32::{
    Foundation::{ERROR_FILE_NOT_FOUND, ERROR_SUCCESS, HMODULE, WIN32_ERROR},
    System::{
        LibraryLoader::{
            GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS, GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
            GetModuleFileNameW, GetModuleHandleExW,
        },
        Registry::{
            HKEY, HKEY_CLASSES_ROOT, KEY_WRITE, REG_OPTION_NON_VOLATILE, REG_SZ, RRF_NOEXPAND,
            RRF_RT_REG_EXPAND_SZ, RRF_RT_REG_SZ, RegCloseKey, RegCreateKeyExW, RegDeleteTreeW,
            RegGetValueW, RegSetValueExW,
        },
    },
};

/// What the class key's default value says.
const DESCRIPTION: &str = "vdi: SQL Server Virtual Device Interface client (sqlvdi-compatible)";

/// `CLSID\{...}` under `HKEY_CLASSES_ROOT`.
fn class_key() -> String {
    let clsid = CLSID_MSSQL_CLIENT_VIRTUAL_DEVICE_SET
        .to_string()
        .to_uppercase();
    format!("CLSID\\{{{clsid}}}")
}

/// The result of a registration call as an `HRESULT`: a refusal or failure is
/// `SELFREG_E_CLASS` with its reason on standard error, a panic `VD_E_UNEXPECTED`.
pub(super) fn outcome(result: Result<Result<(), String>, Box<dyn Any + Send>>) -> HResult {
    match result {
        Ok(Ok(())) => HResult::S_OK,
        Ok(Err(why)) => {
            // Not eprintln!: a failing standard error must not panic out of the DLL.
            let _ = writeln!(std::io::stderr(), "sqlvdi (vdi): {why}");
            HResult::SELFREG_E_CLASS
        }
        Err(_) => HResult::VD_E_UNEXPECTED,
    }
}

/// Whether this DLL may take the class, given the DLL registered for it now (`existing`).
///
/// # Errors
///
/// Why not: the class belongs to another DLL and `force` is not set.
pub(crate) fn may_register(existing: Option<&str>, ours: &str, force: bool) -> Result<(), String> {
    match existing {
        None => Ok(()),
        Some(path) if path.trim().is_empty() || path.eq_ignore_ascii_case(ours) => Ok(()),
        Some(_) if force => Ok(()),
        Some(path) => Err(format!(
            "not registering {ours}: CLSID_MSSQL_ClientVirtualDeviceSet is registered to {path}, \
             which on a machine with SQL Server is Microsoft's sqlvdi.dll; registering this \
             library would replace it for every VDI client on the machine. Set \
             VDI_SQLVDI_FORCE_REGISTER=1 to replace it anyway (DllUnregisterServer does not \
             restore it)."
        )),
    }
}

/// Registers this DLL (see [`may_register`]).
pub(super) fn register(force: bool) -> Result<(), String> {
    let ours = module_path()?;
    let class = class_key();
    let inproc = format!("{class}\\InprocServer32");
    let existing = read_default(&inproc)?;
    may_register(existing.as_deref(), &ours, force)?;
    let key = Key::create(&class)?;
    key.set(None, DESCRIPTION)?;
    drop(key);
    let key = Key::create(&inproc)?;
    key.set(None, &ours)?;
    key.set(Some("ThreadingModel"), "Both")
}

/// Removes the class if this DLL is the one registered for it; leaves another DLL's alone.
pub(super) fn unregister() -> Result<(), String> {
    let ours = module_path()?;
    let class = class_key();
    match read_default(&format!("{class}\\InprocServer32"))? {
        None => Ok(()),
        Some(path) if path.eq_ignore_ascii_case(&ours) => {
            let name = wide(&class);
            // SAFETY: `name` is a NUL-terminated UTF-16 string alive for the call.
            check(
                unsafe { RegDeleteTreeW(HKEY_CLASSES_ROOT, name.as_ptr()) },
                "delete",
                &class,
            )
        }
        Some(path) => Err(format!(
            "not unregistering: CLSID_MSSQL_ClientVirtualDeviceSet is registered to {path}, \
             not to {ours}"
        )),
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain([0]).collect()
}

fn check(status: WIN32_ERROR, what: &str, key: &str) -> Result<(), String> {
    if status == ERROR_SUCCESS {
        Ok(())
    } else {
        Err(format!(
            "cannot {what} HKEY_CLASSES_ROOT\\{key}: Win32 error {status}"
        ))
    }
}

/// The full path of this DLL.
fn module_path() -> Result<String, String> {
    let mut module: HMODULE = ptr::null_mut();
    let here = module_path as fn() -> Result<String, String>;
    // SAFETY: FROM_ADDRESS takes the address of code in the module (this function's) in place
    // of a name; UNCHANGED_REFCOUNT means nothing is to be freed; `module` is writable.
    let ok = unsafe {
        GetModuleHandleExW(
            GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
            here as *const c_void as *const u16,
            &mut module,
        )
    };
    if ok == 0 {
        return Err("cannot find this DLL's module handle".to_owned());
    }
    let mut buf = vec![0u16; 32 * 1024];
    // SAFETY: `buf` is writable for its length in units, which is what is passed.
    let n = unsafe { GetModuleFileNameW(module, buf.as_mut_ptr(), buf.len() as u32) } as usize;
    if n == 0 || n >= buf.len() {
        return Err("cannot read this DLL's path".to_owned());
    }
    String::from_utf16(&buf[..n]).map_err(|_| "this DLL's path is not valid UTF-16".to_owned())
}

/// The default value of `HKEY_CLASSES_ROOT\key`, `None` when the key or the value is missing.
fn read_default(key: &str) -> Result<Option<String>, String> {
    let name = wide(key);
    let mut buf = vec![0u16; 32 * 1024];
    let mut bytes = (buf.len() * 2) as u32;
    // SAFETY: `name` is NUL-terminated; `buf` is writable for `bytes` bytes; a NULL value
    // name is the default value; the type pointer may be NULL.
    let status = unsafe {
        RegGetValueW(
            HKEY_CLASSES_ROOT,
            name.as_ptr(),
            ptr::null(),
            RRF_RT_REG_SZ | RRF_RT_REG_EXPAND_SZ | RRF_NOEXPAND,
            ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut bytes,
        )
    };
    if status == ERROR_FILE_NOT_FOUND {
        return Ok(None);
    }
    check(status, "read", key)?;
    let units = (bytes as usize / 2).min(buf.len());
    let text = &buf[..units];
    let end = text.iter().position(|&u| u == 0).unwrap_or(text.len());
    Ok(Some(String::from_utf16_lossy(&text[..end])))
}

/// An open registry key, closed on drop.
struct Key {
    hkey: HKEY,
    path: String,
}

impl Key {
    fn create(path: &str) -> Result<Self, String> {
        let name = wide(path);
        let mut hkey: HKEY = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated; no class, no security attributes, no disposition
        // wanted; `hkey` is writable.
        let status = unsafe {
            RegCreateKeyExW(
                HKEY_CLASSES_ROOT,
                name.as_ptr(),
                0,
                ptr::null(),
                REG_OPTION_NON_VOLATILE,
                KEY_WRITE,
                ptr::null(),
                &mut hkey,
                ptr::null_mut(),
            )
        };
        check(status, "create", path)?;
        Ok(Self {
            hkey,
            path: path.to_owned(),
        })
    }

    /// Sets a string value (`None`: the default value).
    fn set(&self, value: Option<&str>, data: &str) -> Result<(), String> {
        let name = value.map(wide);
        let data = wide(data);
        // SAFETY: the key is open; `name` is NULL or NUL-terminated; `data` is readable for
        // the byte count passed, its NUL included, as REG_SZ wants.
        let status = unsafe {
            RegSetValueExW(
                self.hkey,
                name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
                0,
                REG_SZ,
                data.as_ptr().cast(),
                (data.len() * 2) as u32,
            )
        };
        check(status, "write", &self.path)
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: the key was opened by RegCreateKeyExW and is closed once, here.
        unsafe { RegCloseKey(self.hkey) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_dll_s_class_is_not_taken_unless_forced() {
        let ours = r"C:\vdi\sqlvdi.dll";
        let microsoft = r"C:\Program Files\Microsoft SQL Server\90\Shared\sqlvdi.dll";
        assert_eq!(may_register(None, ours, false), Ok(()));
        assert_eq!(may_register(Some(""), ours, false), Ok(()));
        assert_eq!(
            may_register(Some(r"c:\VDI\SQLVDI.DLL"), ours, false),
            Ok(())
        );
        let refused = may_register(Some(microsoft), ours, false).unwrap_err();
        assert!(refused.contains(microsoft), "{refused}");
        assert!(refused.contains("VDI_SQLVDI_FORCE_REGISTER=1"), "{refused}");
        assert_eq!(may_register(Some(microsoft), ours, true), Ok(()));
    }

    #[test]
    fn the_class_key_is_the_sdk_s_clsid() {
        assert_eq!(class_key(), r"CLSID\{40700425-0080-11D2-851F-00C04FC21759}");
    }
}
