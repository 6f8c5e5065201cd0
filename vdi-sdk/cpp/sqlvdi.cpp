/* sqlvdi.cpp: the C++ classes of libsqlvdi.so, each method a forward to the Rust side
 * (src/ffi.rs, `vdi_sdk_*`).
 *
 * Compiled without exceptions or RTTI and with no use of the C++ standard library beyond
 * placement new, so the library needs no libstdc++ and nothing here can throw: every method
 * is noexcept, and the Rust functions catch every panic. The Rust side owns all state; a
 * `CVDS*` is its set, a `CVD*` its device. */
#include <new>

#include "vdi_sdk.h"

extern "C" {
CVDS* vdi_sdk_set_new(void);
void vdi_sdk_set_free(CVDS* set);
int vdi_sdk_create(CVDS* set, const char* name, const VDConfig* cfg);
int vdi_sdk_get_configuration(CVDS* set, int64_t timeout, VDConfig* cfg);
int vdi_sdk_open_device(CVDS* set, const char* name, ClientVirtualDevice** out, void** storage,
                        CVD** device);
int vdi_sdk_close(CVDS* set);
int vdi_sdk_signal_abort(CVDS* set);
int vdi_sdk_open_in_secondary(CVDS* set, const char* name);
int vdi_sdk_get_buffer_handle(CVDS* set, const uint8_t* buffer, unsigned int* handle);
int vdi_sdk_map_buffer_handle(CVDS* set, int handle, uint8_t** buffer);
void vdi_sdk_register_device_closed(CVDS* set);
int vdi_sdk_get_command(CVD* device, int64_t timeout, VDC_Command** cmd);
int vdi_sdk_complete_command(CVD* device, VDC_Command* cmd, int32_t code, uint64_t bytes,
                             int64_t position);
}

static_assert(sizeof(ClientVirtualDeviceSet) == sizeof(void*), "one private pointer");
static_assert(sizeof(ClientVirtualDevice) == sizeof(void*), "one private pointer");
static_assert(sizeof(time_t) == sizeof(int64_t), "time_t is 64-bit");

ClientVirtualDeviceSet::ClientVirtualDeviceSet() noexcept : cvds(vdi_sdk_set_new()) {}

ClientVirtualDeviceSet::~ClientVirtualDeviceSet() noexcept
{
    vdi_sdk_set_free(cvds);
    cvds = nullptr;
}

int ClientVirtualDeviceSet::Create(char* name, VDConfig* cfg) noexcept
{
    return vdi_sdk_create(cvds, name, cfg);
}

int ClientVirtualDeviceSet::GetConfiguration(time_t timeout, VDConfig* cfg) noexcept
{
    return vdi_sdk_get_configuration(cvds, static_cast<int64_t>(timeout), cfg);
}

int ClientVirtualDeviceSet::OpenDevice(char* name, ClientVirtualDevice** ppVirtualDevice) noexcept
{
    void* storage = nullptr;
    CVD* device = nullptr;
    int status = vdi_sdk_open_device(cvds, name, ppVirtualDevice, &storage, &device);
    if (status != 0) {
        return status;
    }
    /* The Rust side owns the storage (one pointer, aligned for it) until the set goes. */
    ClientVirtualDevice* vd = new (storage) ClientVirtualDevice();
    vd->cvd = device;
    *ppVirtualDevice = vd;
    return 0;
}

int ClientVirtualDeviceSet::Close() noexcept
{
    return vdi_sdk_close(cvds);
}

int ClientVirtualDeviceSet::SignalAbort() noexcept
{
    return vdi_sdk_signal_abort(cvds);
}

int ClientVirtualDeviceSet::OpenInSecondary(char* setName) noexcept
{
    return vdi_sdk_open_in_secondary(cvds, setName);
}

int ClientVirtualDeviceSet::GetBufferHandle(uint8_t* pBuffer, unsigned int* pBufferHandle) noexcept
{
    return vdi_sdk_get_buffer_handle(cvds, pBuffer, pBufferHandle);
}

int ClientVirtualDeviceSet::MapBufferHandle(int dwBuffer, uint8_t** ppBuffer) noexcept
{
    return vdi_sdk_map_buffer_handle(cvds, dwBuffer, ppBuffer);
}

void ClientVirtualDeviceSet::RegisterDeviceClosed() noexcept
{
    vdi_sdk_register_device_closed(cvds);
}

ClientVirtualDevice::ClientVirtualDevice() noexcept : cvd(nullptr) {}

ClientVirtualDevice::~ClientVirtualDevice() noexcept
{
    /* The set owns the device's state; a device object going away releases nothing. */
    cvd = nullptr;
}

int ClientVirtualDevice::GetCommand(time_t timeOut, VDC_Command** ppCmd) noexcept
{
    return vdi_sdk_get_command(cvd, static_cast<int64_t>(timeOut), ppCmd);
}

int ClientVirtualDevice::CompleteCommand(VDC_Command* pCmd, int completionCode,
                                         unsigned long bytesTransferred, int64_t position) noexcept
{
    return vdi_sdk_complete_command(cvd, pCmd, completionCode, bytesTransferred, position);
}
