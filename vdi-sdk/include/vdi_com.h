/* vdi_com.h: what a COM client of the vdi project's sqlvdi.dll (or of any VDI in-process server
 * of CLSID_MSSQL_ClientVirtualDeviceSet) needs, for Windows C++ compilers.
 *
 * Written for the vdi project from vdi-spec.md: the GUIDs, vtable slot order and structure
 * layouts of section 2, the feature bits of section 3.2, the command codes of section 7.1 and
 * the result codes of section 8. It is not Microsoft's header and holds none of its text.
 *
 * Include <windows.h> (and <objbase.h>) first. Every method returns an HRESULT: S_OK (0) or a
 * VD_E_* code; timeouts are DWORD milliseconds, INFINITE (0xFFFFFFFF) waits without limit. */
#ifndef VDI_COM_H
#define VDI_COM_H

#ifndef __cplusplus
#error "vdi_com.h declares the VDI interfaces as C++ structs; compile as C++"
#endif

#include <windows.h>
#include <objbase.h>
#include <unknwn.h>

/* --- Results (section 8): severity error, facility 0x77 --------------------------------- */

#define VDI_COM_ERROR(code) ((HRESULT)(0x80770000UL | (unsigned long)(code)))
#define VD_E_NOTOPEN VDI_COM_ERROR(0x2)
#define VD_E_TIMEOUT VDI_COM_ERROR(0x3)
#define VD_E_ABORT VDI_COM_ERROR(0x4)
#define VD_E_SECURITY VDI_COM_ERROR(0x5)
#define VD_E_INVALID VDI_COM_ERROR(0x6)
#define VD_E_INSTANCE_NAME VDI_COM_ERROR(0x7)
#define VD_E_NOTSUPPORTED VDI_COM_ERROR(0x9)
#define VD_E_MEMORY VDI_COM_ERROR(0xA)
#define VD_E_UNEXPECTED VDI_COM_ERROR(0xB)
#define VD_E_PROTOCOL VDI_COM_ERROR(0xC)
#define VD_E_OPEN VDI_COM_ERROR(0xD)
#define VD_E_CLOSE VDI_COM_ERROR(0xE)
#define VD_E_BUSY VDI_COM_ERROR(0xF)

/* --- Command codes (section 7.1) ---------------------------------------------------------- */

enum VdiComCommandCode {
    VDC_Read = 1,
    VDC_Write = 2,
    VDC_ClearError = 3,
    VDC_Rewind = 4,
    VDC_WriteMark = 5,
    VDC_SkipMarks = 6,
    VDC_SkipBlocks = 7,
    VDC_Load = 8,
    VDC_GetPosition = 9,
    VDC_SetPosition = 10,
    VDC_Discard = 11,
    VDC_Flush = 12,
    VDC_Snapshot = 13,
    VDC_MountSnapshot = 14,
    VDC_PrepareToFreeze = 15,
    VDC_FileInfoBegin = 16,
    VDC_FileInfoEnd = 17,
    VDC_GetError = 18,
    VDC_Complete = 19
};

/* --- Feature bits (section 3.2) ----------------------------------------------------------- */

enum VdiComFeature {
    VDF_LikePipe = 0x0,
    VDF_Removable = 0x1,
    VDF_Rewind = 0x2,
    VDF_Position = 0x10,
    VDF_SkipBlocks = 0x20,
    VDF_ReversePosition = 0x40,
    VDF_Discard = 0x80,
    VDF_FileMarks = 0x100,
    VDF_RandomAccess = 0x200,
    VDF_SnapshotPrepare = 0x400,
    VDF_RequestComplete = 0x2000,
    VDF_WriteMedia = 0x10000,
    VDF_ReadMedia = 0x20000,
    VDF_CompleteEnabled = 0x40000,
    VDF_LikeDisk = 0x200,
    VDF_LikeTape = 0x173
};

/* --- Structures (section 2.3) --------------------------------------------------------------- */

#pragma pack(push, 8)

/* Eleven 32-bit fields, 44 bytes: the first seven are the client's (CreateEx), the last four
 * the server's (filled in by GetConfiguration). */
struct VDConfig {
    DWORD deviceCount;
    DWORD features;
    DWORD prefixZoneSize;
    DWORD alignment;
    DWORD softFileMarkBlockSize;
    DWORD EOMWarningSize;
    DWORD serverTimeOut;
    DWORD blockSize;
    DWORD maxIODepth;
    DWORD maxTransferSize;
    DWORD bufferAreaSize;
};

/* A command as GetCommand hands it out: read-only for the client, and the same pointer goes
 * back to CompleteCommand. 24 bytes on 64-bit Windows (position at 8, buffer at 16). */
struct VDC_Command {
    DWORD commandCode;
    DWORD size;
    DWORDLONG position;
    BYTE* buffer;
};

#pragma pack(pop)

static_assert(sizeof(DWORD) == 4, "DWORD is 32 bits");
static_assert(sizeof(VDConfig) == 44, "VDConfig is 44 bytes");
#ifdef _WIN64
static_assert(sizeof(VDC_Command) == 24, "VDC_Command is 24 bytes on 64-bit Windows");
#endif

/* --- GUIDs (section 2.1) -------------------------------------------------------------------- */

/* {40700424-0080-11d2-851f-00c04fc21759} */
static const GUID IID_IClientVirtualDevice = {
    0x40700424, 0x0080, 0x11d2, {0x85, 0x1f, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
/* {40700425-0080-11d2-851f-00c04fc21759} */
static const GUID IID_IClientVirtualDeviceSet = {
    0x40700425, 0x0080, 0x11d2, {0x85, 0x1f, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
/* {d0e6eb07-7a62-11d2-8573-00c04fc21759} */
static const GUID IID_IClientVirtualDeviceSet2 = {
    0xd0e6eb07, 0x7a62, 0x11d2, {0x85, 0x73, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};
/* The class: the same GUID as IID_IClientVirtualDeviceSet. */
static const CLSID CLSID_MSSQL_ClientVirtualDeviceSet = {
    0x40700425, 0x0080, 0x11d2, {0x85, 0x1f, 0x00, 0xc0, 0x4f, 0xc2, 0x17, 0x59}};

/* --- Interfaces (section 2.2), slots 0-2 being IUnknown's ----------------------------------- */

struct IClientVirtualDevice : public IUnknown {
    /* 3 */ virtual HRESULT STDMETHODCALLTYPE GetCommand(DWORD dwTimeOut,
                                                       VDC_Command** ppCmd) = 0;
    /* 4 */ virtual HRESULT STDMETHODCALLTYPE CompleteCommand(VDC_Command* pCmd,
                                                            DWORD dwCompletionCode,
                                                            DWORD dwBytesTransferred,
                                                            DWORDLONG dwlPosition) = 0;
};

struct IClientVirtualDeviceSet : public IUnknown {
    /* 3 */ virtual HRESULT STDMETHODCALLTYPE Create(LPCWSTR lpName, VDConfig* pCfg) = 0;
    /* 4 */ virtual HRESULT STDMETHODCALLTYPE GetConfiguration(DWORD dwTimeOut,
                                                             VDConfig* pCfg) = 0;
    /* 5 */ virtual HRESULT STDMETHODCALLTYPE OpenDevice(LPCWSTR lpName,
                                                       IClientVirtualDevice** ppVirtualDevice) = 0;
    /* 6 */ virtual HRESULT STDMETHODCALLTYPE Close() = 0;
    /* 7 */ virtual HRESULT STDMETHODCALLTYPE SignalAbort() = 0;
    /* 8 */ virtual HRESULT STDMETHODCALLTYPE OpenInSecondary(LPCWSTR lpSetName) = 0;
    /* 9 */ virtual HRESULT STDMETHODCALLTYPE GetBufferHandle(BYTE* pBuffer,
                                                            DWORD* pBufferHandle) = 0;
    /* 10 */ virtual HRESULT STDMETHODCALLTYPE MapBufferHandle(DWORD dwBuffer,
                                                             BYTE** ppBuffer) = 0;
};

struct IClientVirtualDeviceSet2 : public IClientVirtualDeviceSet {
    /* 11 */ virtual HRESULT STDMETHODCALLTYPE CreateEx(LPCWSTR lpInstanceName, LPCWSTR lpName,
                                                      VDConfig* pCfg) = 0;
    /* 12 */ virtual HRESULT STDMETHODCALLTYPE OpenInSecondaryEx(LPCWSTR lpInstanceName,
                                                               LPCWSTR lpSetName) = 0;
};

#endif /* VDI_COM_H */
