/* shim.cpp: a C ABI over the C++ classes of a VDI client library (libsqlvdi.so) loaded at run
 * time, for vdi-linux's Rust side (src/raw.rs).
 *
 * The Linux SDK has no C ABI: its interface is two plain C++ classes, ClientVirtualDeviceSet
 * and ClientVirtualDevice, with non-virtual members (vdi-spec.md section 11). The library is
 * opened with dlopen and each member is found by its Itanium-mangled name with dlsym, so the
 * agent needs no libsqlvdi.so at link time and a missing library is an error, not a failed
 * start. A non-virtual member function takes `this` as its first argument (the Itanium C++
 * ABI, which GCC and Clang follow on Linux), so each is called through a plain function
 * pointer of that shape.
 *
 * Every call is wrapped in try/catch: no C++ exception reaches Rust. A call that throws
 * returns VDI_LINUX_THREW (COM's E_UNEXPECTED, a value no VDI library returns: their codes are
 * in facility 0x77). */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <new>

#include "vdi_sdk.h"

#define VDI_LINUX_THREW ((int)0x8000FFFFu)

namespace {

using SetCtor = void (*)(ClientVirtualDeviceSet*);
using SetDtor = void (*)(ClientVirtualDeviceSet*);
using CreateFn = int (*)(ClientVirtualDeviceSet*, char*, VDConfig*);
using GetConfigurationFn = int (*)(ClientVirtualDeviceSet*, time_t, VDConfig*);
using OpenDeviceFn = int (*)(ClientVirtualDeviceSet*, char*, ClientVirtualDevice**);
using SetCallFn = int (*)(ClientVirtualDeviceSet*);
using OpenInSecondaryFn = int (*)(ClientVirtualDeviceSet*, char*);
using GetBufferHandleFn = int (*)(ClientVirtualDeviceSet*, uint8_t*, unsigned int*);
using MapBufferHandleFn = int (*)(ClientVirtualDeviceSet*, int, uint8_t**);
using GetCommandFn = int (*)(ClientVirtualDevice*, time_t, VDC_Command**);
using CompleteCommandFn = int (*)(ClientVirtualDevice*, VDC_Command*, int, unsigned long, int64_t);

/* Room for the set object. The SDK's class holds one private pointer; the storage is larger
 * and zeroed, so a library whose object had a few more fields would still fit. The library
 * does not export its size: a class larger than this would overrun the storage, undetected
 * (the mangled names would still resolve). */
constexpr size_t SET_STORAGE = 256;

}  // namespace

/* The library's members, resolved once; never unloaded (dlclose under live threads and
 * objects is unsafe, and a process loads the SDK once). */
struct vdi_linux_lib {
    void* handle;
    SetCtor set_ctor;
    SetDtor set_dtor;
    CreateFn create;
    GetConfigurationFn get_configuration;
    OpenDeviceFn open_device;
    SetCallFn close;
    SetCallFn signal_abort;
    OpenInSecondaryFn open_in_secondary;
    GetBufferHandleFn get_buffer_handle;
    MapBufferHandleFn map_buffer_handle;
    GetCommandFn get_command;
    CompleteCommandFn complete_command;
};

namespace {

struct Member {
    const char* mangled;
    const char* readable;
    size_t offset;
};

#define MEMBER(field, mangled, readable) {mangled, readable, offsetof(vdi_linux_lib, field)}

const Member MEMBERS[] = {
    MEMBER(set_ctor, "_ZN22ClientVirtualDeviceSetC1Ev",
           "ClientVirtualDeviceSet::ClientVirtualDeviceSet()"),
    MEMBER(set_dtor, "_ZN22ClientVirtualDeviceSetD1Ev",
           "ClientVirtualDeviceSet::~ClientVirtualDeviceSet()"),
    MEMBER(create, "_ZN22ClientVirtualDeviceSet6CreateEPcP8VDConfig",
           "ClientVirtualDeviceSet::Create(char*, VDConfig*)"),
    MEMBER(get_configuration, "_ZN22ClientVirtualDeviceSet16GetConfigurationElP8VDConfig",
           "ClientVirtualDeviceSet::GetConfiguration(time_t, VDConfig*)"),
    MEMBER(open_device, "_ZN22ClientVirtualDeviceSet10OpenDeviceEPcPP19ClientVirtualDevice",
           "ClientVirtualDeviceSet::OpenDevice(char*, ClientVirtualDevice**)"),
    MEMBER(close, "_ZN22ClientVirtualDeviceSet5CloseEv", "ClientVirtualDeviceSet::Close()"),
    MEMBER(signal_abort, "_ZN22ClientVirtualDeviceSet11SignalAbortEv",
           "ClientVirtualDeviceSet::SignalAbort()"),
    MEMBER(open_in_secondary, "_ZN22ClientVirtualDeviceSet15OpenInSecondaryEPc",
           "ClientVirtualDeviceSet::OpenInSecondary(char*)"),
    MEMBER(get_buffer_handle, "_ZN22ClientVirtualDeviceSet15GetBufferHandleEPhPj",
           "ClientVirtualDeviceSet::GetBufferHandle(uint8_t*, unsigned int*)"),
    MEMBER(map_buffer_handle, "_ZN22ClientVirtualDeviceSet15MapBufferHandleEiPPh",
           "ClientVirtualDeviceSet::MapBufferHandle(int, uint8_t**)"),
    MEMBER(get_command, "_ZN19ClientVirtualDevice10GetCommandElPP11VDC_Command",
           "ClientVirtualDevice::GetCommand(time_t, VDC_Command**)"),
    MEMBER(complete_command, "_ZN19ClientVirtualDevice15CompleteCommandEP11VDC_Commandiml",
           "ClientVirtualDevice::CompleteCommand(VDC_Command*, int, unsigned long, int64_t)"),
};

void copy_message(char* out, size_t len, const char* a, const char* b)
{
    if (out == nullptr || len == 0) {
        return;
    }
    snprintf(out, len, "%s%s", a != nullptr ? a : "", b != nullptr ? b : "");
}

ClientVirtualDeviceSet* as_set(void* p)
{
    return static_cast<ClientVirtualDeviceSet*>(p);
}

ClientVirtualDevice* as_device(void* p)
{
    return static_cast<ClientVirtualDevice*>(p);
}

/* Serializes the shim's umask swaps. The umask is the process's: two calls that each set it to
 * 0 and then restore what they saw would, interleaved, restore each other's 0 and leave the
 * process at umask 0 for good. Under this lock each call sees, and restores, the umask as it
 * was outside the shim's calls. (Another thread's own umask calls, and files it creates
 * meanwhile, are not covered: those get umask 0 for the duration of the call, as documented on
 * LibSqlVdi::umask_zero.) A pthread mutex: static initialization, and no exceptions. */
pthread_mutex_t UMASK_LOCK = PTHREAD_MUTEX_INITIALIZER;

/* Holds UMASK_LOCK with the umask at 0 for its lifetime, when `zero`; does nothing otherwise. */
class UmaskZero {
public:
    explicit UmaskZero(int zero) noexcept : zero_(zero != 0), old_(0)
    {
        if (zero_) {
            pthread_mutex_lock(&UMASK_LOCK);
            old_ = umask(0);
        }
    }
    ~UmaskZero()
    {
        if (zero_) {
            umask(old_);
            pthread_mutex_unlock(&UMASK_LOCK);
        }
    }
    UmaskZero(const UmaskZero&) = delete;
    UmaskZero& operator=(const UmaskZero&) = delete;

private:
    bool zero_;
    mode_t old_;
};

}  // namespace

extern "C" {

/* Opens `path` and resolves every member. 0: `*out` is the library. 1: dlopen failed, the
 * message is dlerror's. 2: a member is missing, the message names it. */
int vdi_linux_load(const char* path, const vdi_linux_lib** out, char* message,
                   size_t message_len) noexcept
{
    if (path == nullptr || out == nullptr) {
        return 1;
    }
    *out = nullptr;
    dlerror();
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        copy_message(message, message_len, dlerror(), nullptr);
        return 1;
    }
    vdi_linux_lib* lib = new (std::nothrow) vdi_linux_lib();
    if (lib == nullptr) {
        copy_message(message, message_len, "out of memory", nullptr);
        return 1;
    }
    lib->handle = handle;
    for (const Member& m : MEMBERS) {
        dlerror();
        void* sym = dlsym(handle, m.mangled);
        if (sym == nullptr) {
            if (message != nullptr && message_len > 0) {
                snprintf(message, message_len, "%s (%s)", m.readable, m.mangled);
            }
            delete lib;
            return 2;
        }
        /* POSIX guarantees that a dlsym result converts to a function pointer. On a missing
     * member the handle is left open, not dlclose'd: the library's constructors have run, and
     * unloading it is not worth their risk. */
        memcpy(reinterpret_cast<char*>(lib) + m.offset, &sym, sizeof(sym));
    }
    *out = lib;
    return 0;
}

/* `new ClientVirtualDeviceSet`: 0 and `*out`, VD_E_MEMORY, or VDI_LINUX_THREW. */
int vdi_linux_set_new(const vdi_linux_lib* lib, void** out) noexcept
{
    *out = nullptr;
    void* storage = ::operator new(SET_STORAGE, std::nothrow);
    if (storage == nullptr) {
        return VD_E_MEMORY;
    }
    memset(storage, 0, SET_STORAGE);
    try {
        lib->set_ctor(as_set(storage));
    } catch (...) {
        ::operator delete(storage);
        return VDI_LINUX_THREW;
    }
    *out = storage;
    return 0;
}

/* `delete set`: the destructor, then the storage (also when the destructor throws). */
int vdi_linux_set_delete(const vdi_linux_lib* lib, void* set) noexcept
{
    int rc = 0;
    try {
        lib->set_dtor(as_set(set));
    } catch (...) {
        rc = VDI_LINUX_THREW;
    }
    ::operator delete(set);
    return rc;
}

/* Create, with the process umask 0 for the call when `umask_zero` is set (SQL Server on Linux
 * opens the objects Create makes: the SDK sample does the same, for the whole process). The
 * swaps of concurrent calls are serialized (UMASK_LOCK). */
int vdi_linux_create(const vdi_linux_lib* lib, void* set, char* name, VDConfig* cfg,
                     int umask_zero) noexcept
{
    UmaskZero guard(umask_zero);
    try {
        return lib->create(as_set(set), name, cfg);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_get_configuration(const vdi_linux_lib* lib, void* set, int64_t timeout,
                                VDConfig* cfg) noexcept
{
    try {
        return lib->get_configuration(as_set(set), static_cast<time_t>(timeout), cfg);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_open_device(const vdi_linux_lib* lib, void* set, char* name, void** device) noexcept
{
    *device = nullptr;
    ClientVirtualDevice* vd = nullptr;
    try {
        int rc = lib->open_device(as_set(set), name, &vd);
        if (rc == 0) {
            *device = vd;
        }
        return rc;
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_close(const vdi_linux_lib* lib, void* set) noexcept
{
    try {
        return lib->close(as_set(set));
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_signal_abort(const vdi_linux_lib* lib, void* set) noexcept
{
    try {
        return lib->signal_abort(as_set(set));
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

/* OpenInSecondary, with the umask as for Create. */
int vdi_linux_open_in_secondary(const vdi_linux_lib* lib, void* set, char* name,
                                int umask_zero) noexcept
{
    UmaskZero guard(umask_zero);
    try {
        return lib->open_in_secondary(as_set(set), name);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_get_buffer_handle(const vdi_linux_lib* lib, void* set, uint8_t* buffer,
                                unsigned int* handle) noexcept
{
    try {
        return lib->get_buffer_handle(as_set(set), buffer, handle);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_map_buffer_handle(const vdi_linux_lib* lib, void* set, int handle,
                                uint8_t** buffer) noexcept
{
    try {
        return lib->map_buffer_handle(as_set(set), handle, buffer);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_get_command(const vdi_linux_lib* lib, void* device, int64_t timeout,
                          VDC_Command** cmd) noexcept
{
    *cmd = nullptr;
    try {
        return lib->get_command(as_device(device), static_cast<time_t>(timeout), cmd);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

int vdi_linux_complete_command(const vdi_linux_lib* lib, void* device, VDC_Command* cmd,
                               int32_t code, uint64_t bytes, int64_t position) noexcept
{
    try {
        return lib->complete_command(as_device(device), cmd, code,
                                     static_cast<unsigned long>(bytes), position);
    } catch (...) {
        return VDI_LINUX_THREW;
    }
}

}  /* extern "C" */
