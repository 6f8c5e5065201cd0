/* vdi_sdk.h: the C++ interface of the vdi project's libsqlvdi.so.
 *
 * Written for the vdi project from the published description of the Linux VDI client SDK
 * (vdi-spec.md section 11): the same classes, members, types and values, so that a client
 * built against either declaration links and runs against the other library. It is not
 * Microsoft's header and holds none of its text.
 *
 * Every method returns 0 or a VD_E_* code (never throws); timeouts are in milliseconds, any
 * negative value waits without limit. */
#ifndef VDI_SDK_H
#define VDI_SDK_H

#include <stdint.h>
#include <time.h>

/* Win32 completion codes a client passes to CompleteCommand. */
#define ERROR_SUCCESS 0L
#define ERROR_HANDLE_EOF 38L
#define ERROR_NOT_SUPPORTED 50L
#define ERROR_DISK_FULL 112L
#define ERROR_OPERATION_ABORTED 995L

/* The results: 0, or VD_E_* (facility 0x77, severity error). */
#define VDI_SDK_ERROR(code) ((int)(0x80770000u | (unsigned)(code)))
#define VD_E_NOTOPEN VDI_SDK_ERROR(0x2)
#define VD_E_TIMEOUT VDI_SDK_ERROR(0x3)
#define VD_E_ABORT VDI_SDK_ERROR(0x4)
#define VD_E_SECURITY VDI_SDK_ERROR(0x5)
#define VD_E_INVALID VDI_SDK_ERROR(0x6)
#define VD_E_INSTANCE_NAME VDI_SDK_ERROR(0x7)
#define VD_E_NOTSUPPORTED VDI_SDK_ERROR(0x9)
#define VD_E_MEMORY VDI_SDK_ERROR(0xA)
#define VD_E_UNEXPECTED VDI_SDK_ERROR(0xB)
#define VD_E_PROTOCOL VDI_SDK_ERROR(0xC)
#define VD_E_OPEN VDI_SDK_ERROR(0xD)
#define VD_E_CLOSE VDI_SDK_ERROR(0xE)
#define VD_E_BUSY VDI_SDK_ERROR(0xF)

/* Command codes (VDC_*) and feature bits (VDF_*), as plain constants. */
enum VdiSdkCommandCode {
    VDC_Read = 1,
    VDC_Write = 2,
    VDC_ClearError = 3,
    VDC_Flush = 12,
    VDC_Complete = 19
};
enum VdiSdkFeature {
    VDF_LikePipe = 0x0,
    VDF_RequestComplete = 0x2000,
    VDF_WriteMedia = 0x10000,
    VDF_ReadMedia = 0x20000,
    VDF_CompleteEnabled = 0x40000
};

/* The configuration: eleven 32-bit fields, 44 bytes. The first seven are the client's, the
 * last four the server's (filled in by GetConfiguration). */
struct VDConfig {
    uint32_t deviceCount;
    uint32_t features;
    uint32_t prefixZoneSize;
    uint32_t alignment;
    uint32_t softFileMarkBlockSize;
    uint32_t EOMWarningSize;
    uint32_t serverTimeOut;
    uint32_t blockSize;
    uint32_t maxIODepth;
    uint32_t maxTransferSize;
    uint32_t bufferAreaSize;
};

/* A command: 24 bytes (code, size, position at offset 8, buffer at offset 16). It stays
 * readable and writable until the device's next GetCommand. */
struct VDC_Command {
    int32_t commandCode;
    int32_t size;
    int64_t position;
    uint8_t* buffer;
};

#ifdef __cplusplus
static_assert(sizeof(VDConfig) == 44, "VDConfig is 44 bytes");
static_assert(sizeof(VDC_Command) == 24, "VDC_Command is 24 bytes");

class CVDS; /* the library's set, opaque */
class CVD;  /* the library's device, opaque */
class ClientVirtualDeviceSet;

/* A device of a set; OpenDevice hands it out and the set owns it (do not delete it). */
class ClientVirtualDevice {
public:
    ClientVirtualDevice() noexcept;
    ~ClientVirtualDevice() noexcept;
    ClientVirtualDevice(const ClientVirtualDevice&) = delete;
    ClientVirtualDevice& operator=(const ClientVirtualDevice&) = delete;

    int GetCommand(time_t timeOut, VDC_Command** ppCmd) noexcept;
    int CompleteCommand(VDC_Command* pCmd, int completionCode, unsigned long bytesTransferred,
                        int64_t position) noexcept;

private:
    CVD* cvd;
    friend class ClientVirtualDeviceSet;
};

/* A virtual device set, created (Create) or joined from a secondary process (OpenInSecondary). */
class ClientVirtualDeviceSet {
public:
    int Create(char* name, VDConfig* cfg) noexcept;
    int GetConfiguration(time_t timeout, VDConfig* cfg) noexcept;
    int OpenDevice(char* name, ClientVirtualDevice** ppVirtualDevice) noexcept;
    int Close() noexcept;
    int SignalAbort() noexcept;
    int OpenInSecondary(char* setName) noexcept;
    int GetBufferHandle(uint8_t* pBuffer, unsigned int* pBufferHandle) noexcept;
    int MapBufferHandle(int dwBuffer, uint8_t** ppBuffer) noexcept;
    void RegisterDeviceClosed() noexcept;

    ClientVirtualDeviceSet() noexcept;
    ~ClientVirtualDeviceSet() noexcept;
    ClientVirtualDeviceSet(const ClientVirtualDeviceSet&) = delete;
    ClientVirtualDeviceSet& operator=(const ClientVirtualDeviceSet&) = delete;

private:
    CVDS* cvds;
};
#endif /* __cplusplus */

#endif /* VDI_SDK_H */
